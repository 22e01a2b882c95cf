//! The embedded store's write-ahead log: one preallocated file next to the redb file, where each group commit appends
//! one record (the row-level effects of the group) and syncs it with one `fdatasync`.
//!
//! # Record layout (all integers little-endian)
//! `magic u32 | payload length u32 | epoch u64 | sequence u64 | crc32c u32 | reserved u32 (0) | payload`, the CRC-32C
//! covering the first 24 header bytes and the payload. Records follow each other from offset 0. A lap of the log has one
//! epoch (stored durably in redb by the checkpoint that starts the lap) and sequences 0, 1, 2, ... so a reader stops at
//! the first record that is torn (bad checksum, length past the end), zeroed, from an earlier lap (other epoch) or out of
//! order (other sequence): everything before it was synced before it was written.
//!
//! # Payload
//! A list of operations, each `tag u8 | table name length u16 | table name | key length u32 | key`, then for a put
//! `value length u32 | value` (tag 1: put, tag 2: delete). Operations are whole-row puts and deletes of redb's byte
//! tables, so replaying a record twice gives the same store as replaying it once.
//!
//! # How an append reaches the disk
//! Appends overwrite blocks that already exist in the file (it grows in zero-filled [`WAL_GROW_BYTES`] steps, synced,
//! during its first lap only): the file never changes size and no extent changes state, so a sync writes the record's
//! data blocks and no filesystem metadata. Each append is one `pwrite` of whole [`WAL_BLOCK_BYTES`] blocks through a
//! second descriptor opened `O_DIRECT | O_DSYNC` (the partial last block is kept in memory and written again with
//! the next record; the bytes of earlier records in it are the same in the old and the new block, so a torn block
//! write cannot damage them). On this machine's ext4 that costs less CPU per append than a buffered `pwrite` +
//! `fdatasync` of the same record (`cargo bench --bench commit`, lines `log_append/*`; figures in the README's "Bench"
//! section of the ORM). Where `O_DIRECT` is refused (tmpfs), appends fall back to `pwrite` + `fdatasync`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Default size of the log file: a lap holds this many bytes of records before a checkpoint restarts it (about 10,000
/// creates of the demo's messages; replay at open reads at most this much).
pub const WAL_BYTES_DEFAULT: u64 = 4 << 20;
/// Smallest accepted log size (a smaller configured size is raised to it).
pub const WAL_BYTES_MIN: u64 = 64 << 10;
/// Bytes of a record header.
pub const HEADER_BYTES: usize = 32;
const MAGIC: u32 = 0x4c57_4353; // "SCWL" read as little-endian bytes
const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;
/// Longest table name a record can carry (the name length is a u16).
pub const TABLE_NAME_BYTES_MAX: usize = u16::MAX as usize;
/// The file grows (zero-filled, then synced with its new size) by this much when an append reaches its end; once a lap
/// has filled it, it has its full size and appends never change its metadata again.
pub const WAL_GROW_BYTES: u64 = 256 << 10;
/// Unit of the direct writes: their offset, length and buffer address are multiples of it.
pub const WAL_BLOCK_BYTES: usize = 4096;

// -------------------------------------------------------------------------------------------------------------------
// CRC-32C (Castagnoli), table-driven.

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0x82F6_3B78 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CRC_TABLE: [u32; 256] = crc_table();

fn crc32c(parts: &[&[u8]]) -> u32 {
    let mut c = !0u32;
    for part in parts {
        for &b in *part {
            c = CRC_TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
        }
    }
    !c
}

// -------------------------------------------------------------------------------------------------------------------
// The payload codec.

/// The effects of one group commit, encoded as a record payload while the jobs run.
#[derive(Debug, Default)]
pub struct Effects {
    buf: Vec<u8>,
    ops: usize,
}

impl Effects {
    /// Records `table[key] = value`.
    pub fn put(&mut self, table: &str, key: &[u8], value: &[u8]) {
        self.op(OP_PUT, table, key);
        self.buf
            .extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(value);
    }

    /// Records the removal of `table[key]`.
    pub fn delete(&mut self, table: &str, key: &[u8]) {
        self.op(OP_DELETE, table, key);
    }

    fn op(&mut self, tag: u8, table: &str, key: &[u8]) {
        // Table names come from schemas (identifiers); one longer than a u16 cannot be written by redb's callers here.
        let name = &table.as_bytes()[..table.len().min(TABLE_NAME_BYTES_MAX)];
        self.buf.push(tag);
        self.buf
            .extend_from_slice(&(name.len() as u16).to_le_bytes());
        self.buf.extend_from_slice(name);
        self.buf
            .extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(key);
        self.ops += 1;
    }

    /// Operations recorded.
    pub fn ops(&self) -> usize {
        self.ops
    }

    /// The encoded payload.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Forgets every operation (the transaction they belonged to was aborted).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.ops = 0;
    }
}

/// One operation decoded from a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op<'a> {
    /// `table[key] = value`.
    Put {
        table: &'a str,
        key: &'a [u8],
        value: &'a [u8],
    },
    /// Removal of `table[key]`.
    Delete { table: &'a str, key: &'a [u8] },
}

/// A payload that does not decode (only possible if a record passed its checksum with bad content).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("write-ahead log: malformed record payload at byte {at}")]
pub struct PayloadError {
    /// Offset in the payload where decoding failed.
    pub at: usize,
}

/// Decodes every operation of `payload`, in order.
pub fn decode(payload: &[u8]) -> Result<Vec<Op<'_>>, PayloadError> {
    let mut ops = Vec::new();
    let mut at = 0;
    let take = |at: &mut usize, n: usize| -> Result<&[u8], PayloadError> {
        let end = at.checked_add(n).filter(|&e| e <= payload.len());
        match end {
            Some(end) => {
                let s = &payload[*at..end];
                *at = end;
                Ok(s)
            }
            None => Err(PayloadError { at: *at }),
        }
    };
    while at < payload.len() {
        let start = at;
        let tag = take(&mut at, 1)?[0];
        let n = take(&mut at, 2)?;
        let name_len = u16::from_le_bytes([n[0], n[1]]) as usize;
        let table = std::str::from_utf8(take(&mut at, name_len)?)
            .map_err(|_| PayloadError { at: start })?;
        let k = take(&mut at, 4)?;
        let key = take(
            &mut at,
            u32::from_le_bytes([k[0], k[1], k[2], k[3]]) as usize,
        )?;
        match tag {
            OP_PUT => {
                let v = take(&mut at, 4)?;
                let value = take(
                    &mut at,
                    u32::from_le_bytes([v[0], v[1], v[2], v[3]]) as usize,
                )?;
                ops.push(Op::Put { table, key, value });
            }
            OP_DELETE => ops.push(Op::Delete { table, key }),
            _ => return Err(PayloadError { at: start }),
        }
    }
    Ok(ops)
}

// -------------------------------------------------------------------------------------------------------------------
// Records.

/// Appends the record `(epoch, seq, payload)` to `out`.
pub fn encode_record(out: &mut Vec<u8>, epoch: u64, seq: u64, payload: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&epoch.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    let crc = crc32c(&[&out[start..start + 24], payload]);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(payload);
}

/// The payloads of the valid records of lap `epoch` at the start of `log`, in order (see the module docs for where a
/// reader stops).
pub fn scan(log: &[u8], epoch: u64) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut at = 0usize;
    let mut seq = 0u64;
    while log.len() - at >= HEADER_BYTES {
        let h = &log[at..at + HEADER_BYTES];
        let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().unwrap_or([0; 8]));
        if u32_at(0) != MAGIC || u64_at(8) != epoch || u64_at(16) != seq || u32_at(28) != 0 {
            break;
        }
        let len = u32_at(4) as usize;
        let body = at + HEADER_BYTES;
        if len > log.len() - body {
            break;
        }
        let payload = &log[body..body + len];
        if crc32c(&[&h[..24], payload]) != u32_at(24) {
            break;
        }
        out.push(payload);
        at = body + len;
        seq += 1;
    }
    out
}

// -------------------------------------------------------------------------------------------------------------------
// The log file.

/// The open log: where the next record goes. Owned by whoever holds the store's commit lock.
#[derive(Debug)]
pub struct Wal {
    file: File,
    path: PathBuf,
    capacity: u64,
    /// Bytes of the file that exist (zero-filled or written).
    allocated: u64,
    epoch: u64,
    seq: u64,
    offset: u64,
    /// Offset of the last appended record (for [`Wal::retract`]).
    last: Option<u64>,
    buf: Vec<u8>,
    /// The `O_DIRECT | O_DSYNC` descriptor of appends; `None`: buffered `pwrite` + `fdatasync`.
    direct: Option<File>,
    /// The bytes of the current partial block, before `offset` (direct mode), and the same before the last append.
    tail: Vec<u8>,
    prev_tail: Vec<u8>,
    /// Buffer of direct writes (sliced at a block-aligned address).
    scratch: Vec<u8>,
    /// Records appended and bytes written since the process opened the log.
    appends: u64,
    bytes: u64,
}

impl Wal {
    /// The log file of the database at `db_path`: the same name with `.wal` appended.
    pub fn path_for(db_path: &Path) -> PathBuf {
        let mut name = db_path.as_os_str().to_os_string();
        name.push(".wal");
        PathBuf::from(name)
    }

    /// Opens (or creates) the log at `path` for laps of up to `bytes` bytes, and returns it with the file's current
    /// content, for replay. The file is never shrunk: its capacity is the larger of its size and `bytes`.
    pub fn open(path: &Path, bytes: u64) -> io::Result<(Self, Vec<u8>)> {
        Self::open_with(path, bytes, true)
    }

    /// [`Wal::open`], with direct writes or not (`false`: buffered `pwrite` + `fdatasync`, as where `O_DIRECT` is refused).
    pub fn open_with(path: &Path, bytes: u64, direct: bool) -> io::Result<(Self, Vec<u8>)> {
        let block = WAL_BLOCK_BYTES as u64;
        let bytes = bytes.max(WAL_BYTES_MIN).div_ceil(block) * block;
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        if !existed {
            // The new directory entry must survive a crash before anything in the file counts.
            file.sync_all()?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)?.sync_all()?;
            }
        }
        let len = file.metadata()?.len();
        let mut content = vec![0u8; len as usize];
        file.read_exact_at(&mut content, 0)?;
        let direct = if direct {
            use std::os::unix::fs::OpenOptionsExt;
            OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
                .open(path)
                .ok()
        } else {
            None
        };
        Ok((
            Self {
                file,
                path: path.to_path_buf(),
                capacity: len.max(bytes),
                allocated: len,
                epoch: 0,
                seq: 0,
                offset: 0,
                last: None,
                buf: Vec::new(),
                direct,
                tail: Vec::new(),
                prev_tail: Vec::new(),
                scratch: Vec::new(),
                appends: 0,
                bytes: 0,
            },
            content,
        ))
    }

    /// Zero-fills the file up to at least `end` (by [`WAL_GROW_BYTES`] steps, at most to the capacity) and syncs it
    /// with its new size.
    fn allocate(&mut self, end: u64) -> io::Result<()> {
        if end <= self.allocated {
            return Ok(());
        }
        let target = (self.allocated + WAL_GROW_BYTES)
            .max(end)
            .min(self.capacity.max(end));
        let zeros = vec![0u8; (target - self.allocated).min(WAL_GROW_BYTES) as usize];
        let mut at = self.allocated;
        while at < target {
            let n = ((target - at) as usize).min(zeros.len());
            self.file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        self.file.sync_all()?;
        self.allocated = target;
        Ok(())
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current lap.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether a record of `payload_len` bytes fits in the rest of this lap (its last block included).
    pub fn fits(&self, payload_len: usize) -> bool {
        let end = self.offset + (HEADER_BYTES + payload_len) as u64;
        end.div_ceil(WAL_BLOCK_BYTES as u64) * WAL_BLOCK_BYTES as u64 <= self.capacity
    }

    /// Whether appends are direct writes (`O_DIRECT | O_DSYNC`).
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Appends one record and makes it durable: when this returns `Ok`, the record survives a crash.
    pub fn append(&mut self, payload: &[u8]) -> io::Result<()> {
        self.buf.clear();
        encode_record(&mut self.buf, self.epoch, self.seq, payload);
        let at = self.offset;
        if self.direct.is_some() {
            let tail = std::mem::take(&mut self.tail);
            match self.write_direct(at - tail.len() as u64, &tail, true) {
                Ok(()) => self.prev_tail = tail,
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    // This file system refuses direct writes after all: use buffered writes from now on.
                    tracing::warn!(error = %e, path = %self.path.display(), "write-ahead log: direct writes refused, using pwrite + fdatasync");
                    self.direct = None;
                    self.write_buffered(at)?;
                }
                Err(e) => {
                    self.tail = tail;
                    return Err(e);
                }
            }
        } else {
            self.write_buffered(at)?;
        }
        self.last = Some(at);
        self.offset = at + self.buf.len() as u64;
        self.seq += 1;
        self.appends += 1;
        self.bytes += self.buf.len() as u64;
        Ok(())
    }

    fn write_buffered(&mut self, at: u64) -> io::Result<()> {
        self.allocate(at + self.buf.len() as u64)?;
        self.file.write_all_at(&self.buf, at)?;
        self.file.sync_data()
    }

    /// Writes `head` (the bytes already in the block at `block_start`) followed by the encoded record (`with_record`)
    /// or by zeros, padded with zeros to whole blocks, in one direct write; on success `self.tail` is the new partial
    /// block.
    fn write_direct(&mut self, block_start: u64, head: &[u8], with_record: bool) -> io::Result<()> {
        let block = WAL_BLOCK_BYTES;
        let body = if with_record {
            self.buf.len()
        } else {
            HEADER_BYTES
        };
        let total = head.len() + body;
        let padded = total.div_ceil(block) * block;
        self.allocate(block_start + padded as u64)?;
        if self.scratch.len() < padded + block {
            self.scratch.resize(padded + block, 0);
        }
        let a = self.scratch.as_ptr().align_offset(block);
        let w = &mut self.scratch[a..a + padded];
        w[..head.len()].copy_from_slice(head);
        if with_record {
            w[head.len()..total].copy_from_slice(&self.buf);
        } else {
            w[head.len()..total].fill(0);
        }
        w[total..].fill(0);
        let Some(direct) = &self.direct else {
            return Err(io::Error::other("write-ahead log: no direct descriptor"));
        };
        direct.write_all_at(w, block_start)?;
        let end = block_start + if with_record { total } else { head.len() } as u64;
        let new_block = end - end % block as u64;
        self.tail = w[(new_block - block_start) as usize..(end - block_start) as usize].to_vec();
        Ok(())
    }

    /// Takes back the last appended record (its header is zeroed and synced), when what it records could not be
    /// applied: a replay then stops before it.
    pub fn retract(&mut self) -> io::Result<()> {
        let Some(at) = self.last.take() else {
            return Ok(());
        };
        if self.direct.is_some() {
            let head = std::mem::take(&mut self.prev_tail);
            self.write_direct(at - head.len() as u64, &head, false)?;
        } else {
            self.file.write_all_at(&[0u8; HEADER_BYTES], at)?;
            self.file.sync_data()?;
        }
        self.offset = at;
        self.seq -= 1;
        Ok(())
    }

    /// Starts lap `epoch` at offset 0: called once a checkpoint that stored `epoch` is durable (the earlier lap's
    /// records are then stale, whatever is left of them in the file).
    pub fn restart(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.seq = 0;
        self.offset = 0;
        self.last = None;
        self.tail.clear();
        self.prev_tail.clear();
    }

    /// Whether this lap has no record yet.
    pub fn is_empty(&self) -> bool {
        self.offset == 0
    }

    /// Records appended and bytes written since the log was opened.
    pub fn stats(&self) -> (u64, u64) {
        (self.appends, self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn effects() -> Effects {
        let mut e = Effects::default();
        e.put("t:notes", b"key\x00\x01", b"row bytes");
        e.delete("i:notes:label", b"old entry");
        e.put("x:notes", b"", b"");
        e
    }

    #[test]
    fn payloads_round_trip() {
        let e = effects();
        assert_eq!(e.ops(), 3);
        assert_eq!(
            decode(e.bytes()).expect("decodes"),
            vec![
                Op::Put {
                    table: "t:notes",
                    key: b"key\x00\x01",
                    value: b"row bytes"
                },
                Op::Delete {
                    table: "i:notes:label",
                    key: b"old entry"
                },
                Op::Put {
                    table: "x:notes",
                    key: b"",
                    value: b""
                },
            ]
        );
    }

    #[test]
    fn truncated_or_bad_payloads_are_errors_not_panics() {
        let e = effects();
        let bytes = e.bytes();
        for n in 1..bytes.len() {
            // Every strict prefix that does not end on an operation boundary fails; none panics.
            let _ = decode(&bytes[..n]);
        }
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        let mut bad = bytes.to_vec();
        bad[0] = 9;
        assert_eq!(decode(&bad), Err(PayloadError { at: 0 }));
    }

    fn log_of(records: &[(u64, u64, &[u8])]) -> Vec<u8> {
        let mut log = Vec::new();
        for (epoch, seq, payload) in records {
            encode_record(&mut log, *epoch, *seq, payload);
        }
        log.resize(log.len() + 4096, 0);
        log
    }

    #[test]
    fn scan_reads_a_lap_and_stops_at_the_zeroed_tail() {
        let log = log_of(&[(7, 0, b"a"), (7, 1, b"bb"), (7, 2, b"")]);
        assert_eq!(scan(&log, 7), vec![&b"a"[..], b"bb", b""]);
        assert!(
            scan(&log, 8).is_empty(),
            "another lap's records are not this lap's"
        );
        assert!(scan(&[], 7).is_empty());
    }

    #[test]
    fn scan_stops_at_a_torn_record() {
        let log = log_of(&[(7, 0, b"first"), (7, 1, b"second"), (7, 2, b"third")]);
        let second = HEADER_BYTES + 5;
        for i in 0..HEADER_BYTES + 6 {
            let mut torn = log.clone();
            torn[second + i] ^= 0x40;
            assert_eq!(
                scan(&torn, 7),
                vec![&b"first"[..]],
                "byte {i} of the second record flipped"
            );
        }
        // Cut inside the second record: the rest of the file is gone.
        for cut in second..second + HEADER_BYTES + 6 {
            assert_eq!(scan(&log[..cut], 7), vec![&b"first"[..]], "cut at {cut}");
        }
    }

    #[test]
    fn scan_stops_at_a_stale_block_of_an_earlier_lap() {
        // Lap 8 wrote one record over the start of lap 7's; lap 7's second record (valid on its own) follows.
        let mut log = log_of(&[(7, 0, b"old-0"), (7, 1, b"old-1")]);
        let mut new = Vec::new();
        encode_record(&mut new, 8, 0, b"new-0");
        log[..new.len()].copy_from_slice(&new);
        assert_eq!(scan(&log, 8), vec![&b"new-0"[..]]);
        // Same epoch but a sequence out of place (a record that does not follow its predecessor) also stops it.
        let log = log_of(&[(8, 0, b"a"), (8, 2, b"c")]);
        assert_eq!(scan(&log, 8), vec![&b"a"[..]]);
    }

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(&[b"123456789"]), 0xE306_9283);
        assert_eq!(crc32c(&[b"1234", b"56789"]), 0xE306_9283);
    }

    #[test]
    fn append_retract_restart_on_a_file_direct() {
        append_retract_restart_on_a_file(true);
    }

    #[test]
    fn append_retract_restart_on_a_file_buffered() {
        append_retract_restart_on_a_file(false);
    }

    /// Many records of every size across block boundaries, each readable after a reopen.
    #[test]
    fn records_across_blocks_read_back() {
        for direct in [true, false] {
            let dir = std::env::temp_dir().join(format!(
                "shardcast-wal-blocks-{}-{direct}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).expect("dir");
            let path = dir.join("db.redb.wal");
            let _ = std::fs::remove_file(&path);
            let (mut wal, _) = Wal::open_with(&path, 0, direct).expect("open");
            wal.restart(11);
            let payloads: Vec<Vec<u8>> = (0..200usize)
                .map(|i| vec![(i % 251) as u8; (i * 37) % 5000])
                .collect();
            let mut n = 0;
            for p in &payloads {
                if !wal.fits(p.len()) {
                    break;
                }
                wal.append(p).expect("append");
                n += 1;
            }
            assert!(n > 20, "{n} records fit in {WAL_BYTES_MIN} bytes");
            let (_, content) = Wal::open_with(&path, 0, direct).expect("reopen");
            let read = scan(&content, 11);
            assert_eq!(read.len(), n);
            for (r, p) in read.iter().zip(&payloads) {
                assert_eq!(*r, p.as_slice());
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    fn append_retract_restart_on_a_file(direct: bool) {
        let dir = std::env::temp_dir().join(format!(
            "shardcast-wal-unit-{}-{direct}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("db.redb.wal");
        let _ = std::fs::remove_file(&path);
        let (mut wal, content) = Wal::open_with(&path, 0, direct).expect("open");
        assert_eq!(content.len(), 0, "a new log is empty");
        assert_eq!(
            std::fs::metadata(&path).expect("meta").len(),
            0,
            "grown on the first append"
        );
        wal.restart(3);
        wal.append(b"one").expect("append");
        assert_eq!(
            std::fs::metadata(&path).expect("meta").len(),
            WAL_GROW_BYTES.min(WAL_BYTES_MIN)
        );
        wal.append(b"two").expect("append");
        wal.retract().expect("retract");
        wal.append(b"three").expect("append");
        drop(wal);
        let (mut wal, content) = Wal::open_with(&path, 0, direct).expect("reopen");
        assert_eq!(scan(&content, 3), vec![&b"one"[..], b"three"]);
        wal.restart(4);
        wal.append(b"four").expect("append");
        let (_, content) = Wal::open_with(&path, 0, direct).expect("reopen");
        assert_eq!(scan(&content, 4), vec![&b"four"[..]]);
        assert!(!wal.fits(WAL_BYTES_MIN as usize));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
