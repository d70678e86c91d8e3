# Installs, when missing, the programs Ferry's two commands run: sourced by scripts/test and
# examples/quickstart/run.sh so a fresh machine needs nothing done by hand. Each function says
# what it installs and why; a tool still missing afterwards is an error that names it.
#
#   install_debian "why" TOOL[:PACKAGE] ...     apt-get install the packages of missing tools
#   install_pip "why" TOOL[:REQUIREMENT] ...    pip install the requirements of missing tools
#   require_tools TOOL ...                       fail unless every tool is there
#
# TOOL is a command name or an absolute path (e.g. /usr/bin/time); PACKAGE / REQUIREMENT
# default to TOOL's name.

tool_present() { # TOOL
  case "$1" in
    /*) [ -x "$1" ] ;;
    *) command -v "$1" >/dev/null 2>&1 ;;
  esac
}

as_root() {
  if [ "$(id -u)" = 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    echo "error: installing needs root: run as root, or install sudo, or run: $*" >&2
    return 1
  fi
}

# The names after the colon of every spec whose tool is missing (deduplicated, in order).
missing_packages() { # SPEC...
  local spec tool package seen=" "
  for spec in "$@"; do
    tool="${spec%%:*}"
    package="${spec#*:}"
    [ "$package" = "$spec" ] && package="$(basename "$tool")"
    tool_present "$tool" && continue
    case "$seen" in *" $package "*) continue ;; esac
    seen="$seen$package "
    printf '%s\n' "$package"
  done
}

install_debian() { # WHY SPEC...
  local why="$1"
  shift
  local packages
  mapfile -t packages < <(missing_packages "$@")
  [ ${#packages[@]} -gt 0 ] || return 0
  echo "==> installing ${packages[*]} from Debian ($why)"
  # Other installs may hold the dpkg lock: wait for it rather than fail.
  as_root apt-get -o DPkg::Lock::Timeout=600 update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${packages[@]}" >/dev/null
}

install_pip() { # WHY SPEC...
  local why="$1"
  shift
  local requirements log
  mapfile -t requirements < <(missing_packages "$@")
  [ ${#requirements[@]} -gt 0 ] || return 0
  if ! python3 -m pip --version >/dev/null 2>&1; then
    install_debian "pip, to install ${requirements[*]}" python3 pip3:python3-pip
  fi
  echo "==> installing ${requirements[*]} from PyPI ($why; a few minutes the first time)"
  log="$(mktemp)"
  # The big ones (checkov) take minutes; an install that hangs must not hang the command.
  if ! timeout 1200 python3 -m pip install --quiet "${requirements[@]}" >"$log" 2>&1; then
    if grep -q externally-managed-environment "$log"; then
      # Debian's own python refuses a system-wide pip install; a user install is fine here.
      timeout 1200 python3 -m pip install --quiet --user --break-system-packages "${requirements[@]}" >"$log" 2>&1 ||
        { cat "$log" >&2; rm -f "$log"; return 1; }
    else
      cat "$log" >&2
      rm -f "$log"
      return 1
    fi
  fi
  rm -f "$log"
  # A --user install puts commands here, which may not be on PATH yet.
  PATH="$PATH:$(python3 -m site --user-base 2>/dev/null)/bin"
  export PATH
  hash -r
}

require_tools() { # TOOL...
  local tool missing=()
  for tool in "$@"; do
    tool_present "$tool" || missing+=("$tool")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "error: ${missing[*]} still missing after the install step; install by hand and rerun" >&2
    return 1
  fi
}
