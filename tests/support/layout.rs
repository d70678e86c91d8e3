//! OCI image layouts written in Rust: `oci-layout`, `index.json` with
//! `org.opencontainers.image.ref.name`, and `blobs/sha256/*`.
//!
//! Layers are real gzip'd tar files holding one file of random (so
//! incompressible) bytes. The gzip uses deflate "stored" blocks: valid for
//! every reader (skopeo's docker-archive writer decompresses them) and cheap to
//! produce, with the tar's digest recorded as the config's `diff_id`.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

use serde_json::{Value, json};
use tempfile::TempDir;

use super::registry::{media_type, random_bytes};
use super::{sha256_digest, tools};

pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

impl Descriptor {
    pub fn to_json(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }

    pub fn from_json(value: &Value) -> Self {
        Self {
            media_type: value["mediaType"].as_str().unwrap_or_default().into(),
            digest: value["digest"].as_str().unwrap_or_else(|| panic!("descriptor without digest: {value}")).into(),
            size: value["size"].as_u64().unwrap_or_default(),
        }
    }
}

/// A single-platform image written into a layout.
#[derive(Clone, Debug)]
pub struct Image {
    pub manifest: Descriptor,
    pub bytes: Vec<u8>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

impl Image {
    pub fn digest(&self) -> &str {
        &self.manifest.digest
    }

    /// Config first, then layers.
    pub fn blobs(&self) -> Vec<Descriptor> {
        std::iter::once(self.config.clone()).chain(self.layers.iter().cloned()).collect()
    }

    pub fn blob_bytes(&self) -> u64 {
        self.blobs().iter().map(|b| b.size).sum()
    }
}

/// A multi-platform OCI index (linux/amd64 + linux/arm64) written into a layout.
#[derive(Clone, Debug)]
pub struct ImageIndex {
    pub manifest: Descriptor,
    pub bytes: Vec<u8>,
    pub children: Vec<Image>,
}

impl ImageIndex {
    pub fn digest(&self) -> &str {
        &self.manifest.digest
    }

    pub fn blobs(&self) -> Vec<Descriptor> {
        self.children.iter().flat_map(Image::blobs).collect()
    }
}

/// An OCI image layout directory in a temp dir.
pub struct OciLayout {
    dir: TempDir,
    refs: Vec<(String, Descriptor)>,
}

impl Default for OciLayout {
    fn default() -> Self {
        Self::new()
    }
}

impl OciLayout {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("ferry-oci-").tempdir().expect("temp dir for OCI layout");
        fs::create_dir_all(dir.path().join("blobs/sha256")).expect("blobs dir");
        fs::write(dir.path().join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("write oci-layout");
        let layout = Self { dir, refs: Vec::new() };
        layout.write_index();
        layout
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `oci:<dir>:<tag>`, for both skopeo and ferry.
    pub fn reference(&self, tag: &str) -> String {
        format!("oci:{}:{tag}", self.path().display())
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        self.path().join("blobs/sha256").join(hex)
    }

    /// A linux/amd64 image whose layers carry `layer_sizes` random bytes each,
    /// tagged `tag`.
    pub fn add_image(&mut self, tag: &str, layer_sizes: &[usize]) -> Image {
        let image = self.write_image("amd64", None, layer_sizes);
        self.tag(tag, image.manifest.clone());
        image
    }

    /// An index of a linux/amd64 and a linux/arm64 image, each with
    /// `layer_sizes` layers of its own, tagged `tag`.
    pub fn add_index(&mut self, tag: &str, layer_sizes: &[usize]) -> ImageIndex {
        let children =
            vec![self.write_image("amd64", None, layer_sizes), self.write_image("arm64", Some("v8"), layer_sizes)];
        let manifests: Vec<Value> = children
            .iter()
            .map(|child| {
                let config: Value =
                    serde_json::from_slice(&fs::read(self.blob_path(&child.config.digest)).unwrap()).unwrap();
                let mut platform = json!({"os": config["os"], "architecture": config["architecture"]});
                if let Some(variant) = config["variant"].as_str() {
                    platform["variant"] = json!(variant);
                }
                let mut d = child.manifest.to_json();
                d["platform"] = platform;
                d
            })
            .collect();
        let index = json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_INDEX,
            "manifests": manifests,
        });
        let bytes = serde_json::to_vec_pretty(&index).expect("index JSON");
        let manifest = self.write_blob(media_type::OCI_INDEX, &bytes);
        self.tag(tag, manifest.clone());
        ImageIndex { manifest, bytes, children }
    }

    /// Digest that `index.json` gives `tag` (None when absent).
    pub fn resolve(&self, tag: &str) -> Option<Descriptor> {
        read_index_json(self.path(), tag)
    }

    fn write_image(&self, arch: &str, variant: Option<&str>, layer_sizes: &[usize]) -> Image {
        // Big layers are written in parallel: this is most of a big test's setup.
        let (layers, diff_ids): (Vec<Descriptor>, Vec<String>) = std::thread::scope(|scope| {
            let writers: Vec<_> = layer_sizes
                .iter()
                .enumerate()
                .map(|(i, &size)| scope.spawn(move || self.write_layer(i, size)))
                .collect();
            writers.into_iter().map(|w| w.join().expect("layer writer thread")).unzip()
        });
        let mut config = json!({
            "created": "2026-01-01T00:00:00Z",
            "architecture": arch,
            "os": "linux",
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Labels": {"dev.ferry.test.nonce": hex::encode(random_bytes(16))},
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": layer_sizes
                .iter()
                .enumerate()
                .map(|(i, size)| json!({
                    "created": "2026-01-01T00:00:00Z",
                    "created_by": format!("ferry test layer {i}: {size} random bytes"),
                }))
                .collect::<Vec<_>>(),
        });
        if let Some(variant) = variant {
            config["variant"] = json!(variant);
        }
        let config = self.write_blob(media_type::OCI_CONFIG, &serde_json::to_vec(&config).expect("config JSON"));
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_MANIFEST,
            "config": config.to_json(),
            "layers": layers.iter().map(Descriptor::to_json).collect::<Vec<_>>(),
        });
        let bytes = serde_json::to_vec_pretty(&manifest).expect("manifest JSON");
        let manifest = self.write_blob(media_type::OCI_MANIFEST, &bytes);
        Image { manifest, bytes, config, layers }
    }

    fn write_blob(&self, media_type: &str, bytes: &[u8]) -> Descriptor {
        let digest = sha256_digest(bytes);
        fs::write(self.blob_path(&digest), bytes).expect("write blob");
        Descriptor { media_type: media_type.into(), digest, size: bytes.len() as u64 }
    }

    /// One gzip'd tar layer holding `size` random bytes; returns its
    /// descriptor and its `diff_id` (digest of the uncompressed tar).
    fn write_layer(&self, index: usize, size: usize) -> (Descriptor, String) {
        let tmp = self.path().join(format!("layer-{index}.tmp"));
        let file = fs::File::create(&tmp).expect("create layer file");
        let mut gz = StoredGzip::new(HashingWriter::new(io::BufWriter::with_capacity(1 << 20, file)));

        let mut header = tar::Header::new_gnu();
        header.set_path(format!("ferry-test/layer-{index}.bin")).expect("tar path");
        header.set_size(size as u64);
        header.set_mode(0o644);
        header.set_mtime(1_767_225_600);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        gz.write_all(header.as_bytes()).expect("write tar header");

        let mut urandom = fs::File::open("/dev/urandom").expect("open /dev/urandom");
        let mut buf = vec![0u8; 256 * 1024];
        let mut left = size;
        while left > 0 {
            let n = left.min(buf.len());
            urandom.read_exact(&mut buf[..n]).expect("read /dev/urandom");
            gz.write_all(&buf[..n]).expect("write layer");
            left -= n;
        }
        let padding = (512 - size % 512) % 512;
        gz.write_all(&vec![0u8; padding + 1024]).expect("write tar trailer");

        let (hashing, diff_id) = gz.finish().expect("finish gzip");
        let (mut file, digest, bytes) = hashing.finish();
        file.flush().expect("flush layer");
        drop(file);
        fs::rename(&tmp, self.blob_path(&digest)).expect("move layer into blobs");
        (Descriptor { media_type: media_type::OCI_LAYER_GZIP.into(), digest, size: bytes }, diff_id)
    }

    fn tag(&mut self, tag: &str, manifest: Descriptor) {
        self.refs.retain(|(t, _)| t != tag);
        self.refs.push((tag.into(), manifest));
        self.write_index();
    }

    fn write_index(&self) {
        let manifests: Vec<Value> = self
            .refs
            .iter()
            .map(|(tag, d)| {
                let mut v = d.to_json();
                v["annotations"] = json!({ REF_NAME: tag });
                v
            })
            .collect();
        let index = json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_INDEX,
            "manifests": manifests,
        });
        fs::write(self.path().join("index.json"), serde_json::to_vec_pretty(&index).expect("index.json"))
            .expect("write index.json");
    }
}

/// The descriptor `index.json` of the layout at `dir` gives `tag`.
pub fn read_index_json(dir: &Path, tag: &str) -> Option<Descriptor> {
    let index: Value = serde_json::from_slice(&fs::read(dir.join("index.json")).ok()?).expect("index.json is JSON");
    index["manifests"]
        .as_array()?
        .iter()
        .find(|m| m["annotations"][REF_NAME].as_str() == Some(tag))
        .map(Descriptor::from_json)
}

/// `sha256:` of the config file named by the first entry of a docker-archive's
/// `manifest.json`.
pub fn docker_archive_config_digest(archive: &Path) -> String {
    let read_entry = |wanted: &str| -> Option<Vec<u8>> {
        let file = fs::File::open(archive).expect("open docker archive");
        let mut tar = tar::Archive::new(file);
        for entry in tar.entries().expect("read docker archive") {
            let mut entry = entry.expect("docker archive entry");
            let path = entry.path().expect("entry path").to_string_lossy().into_owned();
            if path.trim_start_matches("./") == wanted {
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes).expect("read archive entry");
                return Some(bytes);
            }
        }
        None
    };
    let manifest = read_entry("manifest.json").expect("docker archive has manifest.json");
    let manifest: Value = serde_json::from_slice(&manifest).expect("manifest.json is JSON");
    let config_path = manifest[0]["Config"].as_str().expect("manifest.json names a Config");
    let config = read_entry(config_path).expect("docker archive holds its config");
    sha256_digest(&config)
}

/// Writer that counts what passes through and tees it into a `sha256sum`
/// child: the tests run as an unoptimised debug build, where hashing hundreds
/// of MiB in Rust would dominate the suite's runtime.
struct HashingWriter<W> {
    inner: W,
    sha: Sha256Process,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        Self { inner, sha: Sha256Process::start(), bytes: 0 }
    }

    fn finish(self) -> (W, String, u64) {
        (self.inner, self.sha.finish(), self.bytes)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.write_all(&buf[..n])?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// SHA-256 computed by a `sha256sum` child fed through its stdin.
struct Sha256Process {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
}

impl Sha256Process {
    fn start() -> Self {
        let mut child = Command::new(tools::require("sha256sum", "apt-get install -y coreutils"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start sha256sum");
        let stdin = child.stdin.take();
        Self { child: Some(child), stdin }
    }

    /// `sha256:<hex>` of everything written.
    fn finish(mut self) -> String {
        drop(self.stdin.take());
        let out = self.child.take().expect("sha256sum running").wait_with_output().expect("sha256sum output");
        assert!(out.status.success(), "sha256sum failed");
        let text = String::from_utf8_lossy(&out.stdout);
        let hex = text.split_whitespace().next().expect("sha256sum printed a digest");
        assert_eq!(hex.len(), 64, "sha256sum output: {text}");
        format!("sha256:{hex}")
    }
}

impl Write for Sha256Process {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stdin.as_mut().expect("sha256sum stdin open").write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// gzip (RFC 1952) over deflate stored blocks (RFC 1951 §3.2.4): no
/// compression, so random data costs nothing extra to produce. Also hashes the
/// uncompressed stream for the `diff_id`.
struct StoredGzip<W: Write> {
    out: W,
    block: Vec<u8>,
    crc: u32,
    len: u32,
    diff: Sha256Process,
}

const STORED_BLOCK_MAX: usize = 65_535;

impl<W: Write> StoredGzip<W> {
    fn new(mut out: W) -> Self {
        // magic, CM=deflate, FLG=0, MTIME=0, XFL=0, OS=255 (unknown)
        out.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]).expect("write gzip header");
        Self {
            out,
            block: Vec::with_capacity(STORED_BLOCK_MAX),
            crc: 0xffff_ffff,
            len: 0,
            diff: Sha256Process::start(),
        }
    }

    fn emit_block(&mut self, last: bool) -> io::Result<()> {
        let len = self.block.len() as u16;
        // BFINAL bit + BTYPE=00, then pad to the byte boundary (already aligned).
        self.out.write_all(&[u8::from(last)])?;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(&(!len).to_le_bytes())?;
        self.out.write_all(&self.block)?;
        self.block.clear();
        Ok(())
    }

    /// Returns the inner writer and the `sha256:` digest of the uncompressed data.
    fn finish(mut self) -> io::Result<(W, String)> {
        self.emit_block(true)?;
        let crc = !self.crc;
        self.out.write_all(&crc.to_le_bytes())?;
        self.out.write_all(&self.len.to_le_bytes())?;
        Ok((self.out, self.diff.finish()))
    }
}

impl<W: Write> Write for StoredGzip<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(STORED_BLOCK_MAX - self.block.len());
        let data = &buf[..n];
        self.crc = crc32_update(self.crc, data);
        self.len = self.len.wrapping_add(n as u32);
        self.diff.write_all(data)?;
        self.block.extend_from_slice(data);
        if self.block.len() == STORED_BLOCK_MAX {
            self.emit_block(false)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// CRC-32 (IEEE), slicing-by-8.
fn crc32_update(mut crc: u32, data: &[u8]) -> u32 {
    static TABLES: std::sync::OnceLock<Box<[[u32; 256]; 8]>> = std::sync::OnceLock::new();
    let t = TABLES.get_or_init(|| {
        let mut t = Box::new([[0u32; 256]; 8]);
        for i in 0..256u32 {
            let mut c = i;
            for _ in 0..8 {
                c = if c & 1 == 1 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            }
            t[0][i as usize] = c;
        }
        for i in 0..256 {
            for k in 1..8 {
                let prev = t[k - 1][i];
                t[k][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            }
        }
        t
    });
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let lo = crc ^ u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        let hi = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
        crc = t[7][(lo & 0xff) as usize]
            ^ t[6][((lo >> 8) & 0xff) as usize]
            ^ t[5][((lo >> 16) & 0xff) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][(hi & 0xff) as usize]
            ^ t[2][((hi >> 8) & 0xff) as usize]
            ^ t[1][((hi >> 16) & 0xff) as usize]
            ^ t[0][(hi >> 24) as usize];
    }
    for &b in chunks.remainder() {
        crc = t[0][((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

#[cfg(test)]
mod tests {
    #[test]
    fn crc32_matches_the_check_value() {
        assert_eq!(!super::crc32_update(0xffff_ffff, b"123456789"), 0xcbf4_3926);
        let long = b"The quick brown fox jumps over the lazy dog";
        assert_eq!(!super::crc32_update(0xffff_ffff, long), 0x414f_a339);
    }
}
