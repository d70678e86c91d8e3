-- wrk script for bench/intake.sh: replays pre-generated, pre-signed requests and checks answers.
--
--   wrk -t2 -c64 -d10s --latency -s bench/intake/pool.lua URL -- POOL MODE IDS_OUT
--
-- POOL     prefix of the request files written by `bench/intake_gen.py pool`: thread k (0-based)
--          reads POOL.k: requests as "<length>\n" and that many bytes (headers, blank line,
--          body), to which the request line and Host header are prepended. Each thread has its
--          own slice, so no request is sent twice. Loading is a few string operations per request:
--          wrk starts each thread as soon as its init() returns, before the clock starts, so a
--          slow init would let the first thread send uncounted-time requests while the others
--          still load.
-- MODE     "once": every request at most once; a thread that runs out stops sending real
--          requests (it sends GET /__intake_pool_exhausted__, which is answered 404 and counted,
--          so the run is flagged invalid instead of silently replaying signatures).
--          "wrap": cycle through the pool (for the bare axum peer, which checks nothing).
-- IDS_OUT  file that receives the job id of every 202 answer, one per line, written after the
--          run (in done()), so that bench/intake_gen.py can check each one is in the queue DB.
--
-- The path comes from the URL. Every thread does the same client work whatever the target:
-- take a prebuilt request string, and on each answer count the status and look for a job id.
-- done() prints one machine-readable line, "INTAKE_RESULT {json}", after wrk's own report.

local threads = {}
local next_tid = 0

function setup(thread)
   thread:set("tid", next_tid)
   next_tid = next_tid + 1
   threads[#threads + 1] = thread
end

-- Per-thread state (each wrk thread has its own Lua state). Globals, so done() can read them
-- with thread:get().
statuses = {}
ids = {}
nids = 0
duplicates = 0
exhausted = 0
pool_size = 0
sample = nil
ids_out = nil

local pool = {}
local n = 0
local i = 0
local wrap = false
local exhausted_request = nil

function init(args)
   local prefix = args[1]
   wrap = (args[2] == "wrap")
   ids_out = args[3]
   local file = prefix .. "." .. tid
   local f = io.open(file, "rb")
   if not f then
      io.stderr:write("intake pool.lua: cannot open " .. file .. "\n")
      os.exit(2)
   end
   local data = f:read("*a")
   local head = "POST " .. wrk.path .. " HTTP/1.1\r\nHost: " .. wrk.headers["Host"] .. "\r\n"
   local pos = 1
   local size = #data
   while pos <= size do
      local newline = data:find("\n", pos, true)
      local length = newline and tonumber(data:sub(pos, newline - 1))
      if not length or newline + length > size then
         io.stderr:write("intake pool.lua: " .. file .. " is damaged at byte " .. pos .. "\n")
         os.exit(2)
      end
      n = n + 1
      pool[n] = head .. data:sub(newline + 1, newline + length)
      pos = newline + length + 1
   end
   data = nil
   f:close()
   pool_size = n
   if n == 0 then
      io.stderr:write("intake pool.lua: " .. file .. " is empty\n")
      os.exit(2)
   end
   exhausted_request = wrk.format("GET", "/__intake_pool_exhausted__", {}, nil)
end

function request()
   i = i + 1
   if i > n then
      if wrap then
         i = 1
      else
         exhausted = exhausted + 1
         if exhausted == 1 then
            wrk.thread:stop()
         end
         return exhausted_request
      end
   end
   return pool[i]
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
   if status == 202 then
      local id = body:match('"id":"([^"]+)"')
      if id then
         nids = nids + 1
         ids[nids] = id
      end
      if body:find('"duplicate":true', 1, true) then
         duplicates = duplicates + 1
      end
   elseif not sample then
      sample = tostring(status) .. " " .. body:sub(1, 300)
   end
end

local function json_string(s)
   s = s:gsub('[%c"\\]', function(c)
      if c == '"' then return '\\"' end
      if c == "\\" then return "\\\\" end
      return string.format("\\u%04x", c:byte())
   end)
   return '"' .. s .. '"'
end

function done(summary, latency, requests)
   local all_statuses = {}
   local total_ids, total_dups, total_exhausted, total_pool = 0, 0, 0, 0
   local samples = {}
   local out = nil
   for _, thread in ipairs(threads) do
      local st = thread:get("statuses")
      for code, count in pairs(st) do
         local key = tostring(math.floor(code))
         all_statuses[key] = (all_statuses[key] or 0) + count
      end
      total_dups = total_dups + thread:get("duplicates")
      total_exhausted = total_exhausted + thread:get("exhausted")
      total_pool = total_pool + thread:get("pool_size")
      local s = thread:get("sample")
      if s then samples[#samples + 1] = json_string(s) end
      local path = thread:get("ids_out")
      if path and path ~= "" and path ~= "-" then
         out = out or assert(io.open(path, "w"))
         local tids = thread:get("ids")
         for k = 1, thread:get("nids") do
            out:write(tids[k], "\n")
         end
         total_ids = total_ids + thread:get("nids")
      else
         total_ids = total_ids + thread:get("nids")
      end
   end
   if out then out:close() end
   local st = {}
   for code, count in pairs(all_statuses) do
      st[#st + 1] = string.format('"%s":%d', code, count)
   end
   local e = summary.errors
   io.write(string.format(
      'INTAKE_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,' ..
      '"statuses":{%s},"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},' ..
      '"ids":%d,"duplicates":%d,"exhausted":%d,"pool":%d,"samples":[%s]}\n',
      summary.requests, summary.duration, summary.bytes,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
      latency.mean,
      table.concat(st, ","), e.connect, e.read, e.write, e.timeout,
      total_ids, total_dups, total_exhausted, total_pool, table.concat(samples, ",")))
end
