//! Git's pkt-line framing (gitprotocol-common): a 4-hex-digit length that counts itself, then
//! the payload; `0000` is a flush packet. The long-running filter protocol
//! (gitattributes(5), "Long Running Filter Process") is built from it.

use std::io::{self, BufRead, Read, Write};

/// The largest payload of one packet (65520 bytes on the wire, minus the 4-byte length).
pub const MAX_PAYLOAD: usize = 65516;

/// A pkt-line framing error: the peer is not speaking the protocol (or hung up mid-packet).
#[derive(Debug, thiserror::Error)]
pub enum PktError {
    /// Reading or writing the stream failed.
    #[error("pkt-line I/O: {0}")]
    Io(#[from] io::Error),
    /// The length prefix is not 4 hex digits, or names an impossible size.
    #[error("bad pkt-line length {0:?}")]
    BadLength(String),
    /// The stream ended inside a packet.
    #[error("the stream ended inside a pkt-line packet")]
    Truncated,
    /// A text packet was expected to be valid UTF-8 ending in a newline.
    #[error("bad pkt-line text packet {0:?}")]
    BadText(String),
    /// A packet arrived where the protocol allows another.
    #[error("pkt-line protocol: expected {expected}, got {got:?}")]
    Unexpected {
        /// What the protocol allows here.
        expected: &'static str,
        /// What came.
        got: String,
    },
}

/// One packet as read.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    /// `0000`.
    Flush,
    /// A data packet's payload (never empty: `0004` is read as an empty payload).
    Data(&'a [u8]),
}

/// Reads packets from a buffered byte stream. A packet that lies whole in the stream's buffer
/// is handed out where it lies (consumed when the next packet is read); only one that straddles
/// the buffer's end is copied, into a buffer of its own. Git's 64 KiB packets through a 1 MiB
/// buffer are then almost never copied in user space (`git status` on multi-GB files is
/// bound by copies).
pub struct PktReader<R> {
    inner: R,
    buf: Box<[u8; MAX_PAYLOAD]>,
    /// The payload length of the last data packet read.
    last: usize,
    /// Whether that payload lies at the front of `inner`'s buffer (not yet consumed) rather
    /// than in `buf`.
    last_in_inner: bool,
}

impl<R: BufRead> PktReader<R> {
    /// Reads from `inner` (a large buffer makes for few copies and reads).
    pub fn new(inner: R) -> Self {
        PktReader {
            inner,
            buf: Box::new([0; MAX_PAYLOAD]),
            last: 0,
            last_in_inner: false,
        }
    }

    /// The next packet, or `None` when the stream ends cleanly between packets.
    pub fn read_packet(&mut self) -> Result<Option<Packet<'_>>, PktError> {
        if std::mem::take(&mut self.last_in_inner) {
            self.inner.consume(self.last);
        }
        self.last = 0;
        let mut len = [0u8; 4];
        let mut filled = 0;
        while filled < 4 {
            match self.inner.read(&mut len[filled..]) {
                Ok(0) if filled == 0 => return Ok(None),
                Ok(0) => return Err(PktError::Truncated),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        let text = std::str::from_utf8(&len)
            .ok()
            .filter(|t| t.bytes().all(|b| b.is_ascii_hexdigit()));
        let size = text
            .and_then(|t| usize::from_str_radix(t, 16).ok())
            .ok_or_else(|| PktError::BadLength(String::from_utf8_lossy(&len).into_owned()))?;
        match size {
            0 => Ok(Some(Packet::Flush)),
            // 0001 (delim) and 0002 (response end) belong to protocol v2 of fetch, not to
            // the filter protocol; 0003 cannot hold its own length.
            1..=3 => Err(PktError::BadLength(format!("{size:04x}"))),
            _ if size - 4 > MAX_PAYLOAD => Err(PktError::BadLength(format!("{size:04x}"))),
            // An empty payload must not wait for more of the stream.
            4 => Ok(Some(Packet::Data(&[]))),
            _ => {
                let n = size - 4;
                self.last = n;
                if self.buffered()? >= n {
                    self.last_in_inner = true;
                    return Ok(Some(Packet::Data(&self.inner.fill_buf()?[..n])));
                }
                let payload = &mut self.buf[..n];
                self.inner.read_exact(payload).map_err(|e| {
                    if e.kind() == io::ErrorKind::UnexpectedEof {
                        PktError::Truncated
                    } else {
                        PktError::Io(e)
                    }
                })?;
                Ok(Some(Packet::Data(payload)))
            }
        }
    }

    /// How many bytes `inner` holds buffered (reading once if it holds none).
    fn buffered(&mut self) -> io::Result<usize> {
        loop {
            match self.inner.fill_buf() {
                Ok(b) => return Ok(b.len()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The payload of the last data packet read (empty after a flush or before any packet).
    fn last_payload(&mut self) -> io::Result<&[u8]> {
        if self.last_in_inner {
            // Not consumed yet: still at the front of the buffer, which fill_buf returns
            // without reading.
            Ok(&self.inner.fill_buf()?[..self.last])
        } else {
            Ok(&self.buf[..self.last])
        }
    }

    /// Text packets up to the next flush, each without its trailing newline. `None` when the
    /// stream ends before the first packet (the peer is done).
    pub fn read_text_list(&mut self) -> Result<Option<Vec<String>>, PktError> {
        let mut lines = Vec::new();
        loop {
            match self.read_packet()? {
                None if lines.is_empty() => return Ok(None),
                None => return Err(PktError::Truncated),
                Some(Packet::Flush) => return Ok(Some(lines)),
                Some(Packet::Data(payload)) => lines.push(text_line(payload)?),
            }
        }
    }

    /// A reader over the data packets up to the next flush: the content of one file.
    pub fn content(&mut self) -> ContentReader<'_, R> {
        ContentReader {
            packets: self,
            pending: 0..0,
            done: false,
        }
    }
}

fn text_line(payload: &[u8]) -> Result<String, PktError> {
    let bad = || PktError::BadText(String::from_utf8_lossy(payload).into_owned());
    let text = std::str::from_utf8(payload).map_err(|_| bad())?;
    // Git sends text packets with a trailing LF; the protocol says receivers must also accept
    // them without one.
    Ok(text.strip_suffix('\n').unwrap_or(text).to_string())
}

/// The data packets of one file, as a byte stream that ends at the flush packet.
pub struct ContentReader<'a, R> {
    packets: &'a mut PktReader<R>,
    pending: std::ops::Range<usize>,
    done: bool,
}

impl<R: BufRead> ContentReader<'_, R> {
    /// Reads and discards the rest of the content, so the stream is positioned after the
    /// flush (needed before answering, whatever went wrong with the content).
    pub fn drain(&mut self) -> Result<u64, PktError> {
        let mut skipped = self.pending.len() as u64;
        self.pending = 0..0;
        while !self.done {
            match self.packets.read_packet()? {
                None => return Err(PktError::Truncated),
                Some(Packet::Flush) => self.done = true,
                Some(Packet::Data(p)) => skipped += p.len() as u64,
            }
        }
        Ok(skipped)
    }

    /// The next chunk of content (one packet's payload), or `None` after the flush.
    pub fn next_chunk(&mut self) -> Result<Option<&[u8]>, PktError> {
        if !self.pending.is_empty() {
            let range = std::mem::replace(&mut self.pending, 0..0);
            return Ok(Some(&self.packets.last_payload()?[range]));
        }
        if self.done {
            return Ok(None);
        }
        match self.packets.read_packet()? {
            None => Err(PktError::Truncated),
            Some(Packet::Flush) => {
                self.done = true;
                Ok(None)
            }
            Some(Packet::Data(p)) => Ok(Some(p)),
        }
    }
}

impl<R: BufRead> Read for ContentReader<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        // An empty data packet (`0004`) is not the end: only the flush is.
        while self.pending.is_empty() {
            if self.done {
                return Ok(0);
            }
            match self.packets.read_packet().map_err(io::Error::other)? {
                None => return Err(io::Error::other(PktError::Truncated)),
                Some(Packet::Flush) => self.done = true,
                Some(Packet::Data(p)) => self.pending = 0..p.len(),
            }
        }
        let n = out.len().min(self.pending.len());
        let start = self.pending.start;
        out[..n].copy_from_slice(&self.packets.last_payload()?[start..start + n]);
        self.pending.start += n;
        Ok(n)
    }
}

/// Writes packets.
pub struct PktWriter<W: Write> {
    inner: W,
}

impl<W: Write> PktWriter<W> {
    /// Writes to `inner` (buffer it; call [`PktWriter::flush_io`] when the peer must see it).
    pub fn new(inner: W) -> Self {
        PktWriter { inner }
    }

    /// One data packet per `MAX_PAYLOAD` bytes of `data` (nothing for empty data).
    pub fn data(&mut self, data: &[u8]) -> io::Result<()> {
        for chunk in data.chunks(MAX_PAYLOAD) {
            write!(self.inner, "{:04x}", chunk.len() + 4)?;
            self.inner.write_all(chunk)?;
        }
        Ok(())
    }

    /// A text packet: `line` and a newline.
    pub fn text(&mut self, line: &str) -> io::Result<()> {
        let len = line.len() + 1;
        if len > MAX_PAYLOAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "pkt-line text too long",
            ));
        }
        writeln!(self.inner, "{:04x}{line}", len + 4)
    }

    /// A flush packet.
    pub fn flush_pkt(&mut self) -> io::Result<()> {
        self.inner.write_all(b"0000")
    }

    /// Pushes buffered bytes to the peer.
    pub fn flush_io(&mut self) -> io::Result<()> {
        self.inner.flush()
    }

    /// A `Write` that frames everything written into packets of the largest size.
    pub fn content(&mut self) -> ContentWriter<'_, W> {
        ContentWriter {
            packets: self,
            buf: Vec::with_capacity(MAX_PAYLOAD),
        }
    }
}

/// Frames a byte stream into full-size data packets; [`ContentWriter::finish`] writes the
/// last partial packet (but not the flush).
pub struct ContentWriter<'a, W: Write> {
    packets: &'a mut PktWriter<W>,
    buf: Vec<u8>,
}

impl<W: Write> ContentWriter<'_, W> {
    /// Writes what is buffered.
    pub fn finish(mut self) -> io::Result<()> {
        let buf = std::mem::take(&mut self.buf);
        self.packets.data(&buf)
    }
}

impl<W: Write> Write for ContentWriter<'_, W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut rest = data;
        while !rest.is_empty() {
            if self.buf.is_empty() && rest.len() >= MAX_PAYLOAD {
                // Whole packets straight from the caller's buffer.
                let whole = rest.len() - rest.len() % MAX_PAYLOAD;
                self.packets.data(&rest[..whole])?;
                rest = &rest[whole..];
                continue;
            }
            let take = (MAX_PAYLOAD - self.buf.len()).min(rest.len());
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buf.len() == MAX_PAYLOAD {
                self.packets.data(&self.buf)?;
                self.buf.clear();
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_git_writes() {
        let wire = b"0016git-filter-client\n000eversion=2\n0000";
        let mut r = PktReader::new(&wire[..]);
        assert_eq!(
            r.read_text_list().unwrap().unwrap(),
            vec!["git-filter-client", "version=2"]
        );
        assert!(r.read_packet().unwrap().is_none());
    }

    #[test]
    fn content_round_trips_across_packet_boundaries() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut wire = Vec::new();
        {
            let mut w = PktWriter::new(&mut wire);
            let mut c = w.content();
            for piece in data.chunks(1000) {
                c.write_all(piece).unwrap();
            }
            c.finish().unwrap();
            w.flush_pkt().unwrap();
        }
        // Full packets except the last.
        assert_eq!(&wire[..4], b"fff0");
        let mut r = PktReader::new(&wire[..]);
        let mut back = Vec::new();
        r.content().read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
    }

    /// A pipe that hands out at most `step` bytes per read, as a pipe can.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = out.len().min(self.step).min(self.data.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    /// Whatever the buffer and read sizes (packets whole in the buffer, straddling its end,
    /// larger than it), chunks and reads give back the content, the packets after it intact.
    #[test]
    fn packets_read_back_whether_or_not_they_lie_whole_in_the_buffer() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 13 % 253) as u8).collect();
        let mut wire = Vec::new();
        {
            let mut w = PktWriter::new(&mut wire);
            let mut c = w.content();
            for piece in data.chunks(70_001) {
                c.write_all(piece).unwrap();
            }
            c.finish().unwrap();
            w.flush_pkt().unwrap();
            w.text("status=success").unwrap();
            w.flush_pkt().unwrap();
        }
        wire.extend_from_slice(b"0004"); // an empty data packet at the very end
        for capacity in [1, 5, 4096, 65_520, 65_521, 100_000, 1 << 20] {
            for step in [1, 3, 65_520, 1 << 20] {
                if step == 1 && capacity > 5 {
                    continue; // slow, and the 1-byte cases above cover it
                }
                let reader = || {
                    PktReader::new(io::BufReader::with_capacity(
                        capacity,
                        Trickle { data: &wire, step },
                    ))
                };
                let case = format!("capacity {capacity}, reads of {step}");
                let mut r = reader();
                let mut chunks = Vec::new();
                let mut content = r.content();
                while let Some(chunk) = content.next_chunk().unwrap() {
                    chunks.extend_from_slice(chunk);
                }
                assert_eq!(chunks, data, "{case}");
                assert_eq!(
                    r.read_text_list().unwrap().unwrap(),
                    vec!["status=success"],
                    "{case}"
                );
                assert_eq!(r.read_packet().unwrap(), Some(Packet::Data(&[])), "{case}");
                assert_eq!(r.read_packet().unwrap(), None, "{case}");
                // As a byte stream, in odd-sized reads.
                let mut r = reader();
                let mut content = r.content();
                let mut back = Vec::new();
                let mut piece = [0u8; 777];
                loop {
                    let n = content.read(&mut piece).unwrap();
                    if n == 0 {
                        break;
                    }
                    back.extend_from_slice(&piece[..n]);
                }
                assert_eq!(back, data, "{case}");
                assert_eq!(
                    r.read_text_list().unwrap().unwrap(),
                    vec!["status=success"],
                    "{case}"
                );
            }
        }
    }

    #[test]
    fn rejects_bad_framing() {
        for wire in [&b"00"[..], b"zzzz", b"0003", b"0001", b"ffff", b"0009abc"] {
            let mut r = PktReader::new(wire);
            assert!(
                r.read_packet().is_err(),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
    }
}

/// Fuzzing by property: any byte stream is read without panicking, and what the writer frames
/// reads back. `PROPTEST_CASES` sets the run length.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_wire_never_panics(wire in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut r = PktReader::new(&wire[..]);
            for _ in 0..64 {
                match r.read_packet() {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            let mut r = PktReader::new(&wire[..]);
            let _ = r.read_text_list();
            let mut sink = Vec::new();
            let _ = PktReader::new(&wire[..]).content().read_to_end(&mut sink);
        }

        #[test]
        fn hex_prefixed_wire_never_panics(
            parts in proptest::collection::vec((0u32..0x1_0000, proptest::collection::vec(any::<u8>(), 0..80)), 0..8)
        ) {
            let mut wire = Vec::new();
            for (len, body) in parts {
                wire.extend_from_slice(format!("{len:04x}").as_bytes());
                wire.extend_from_slice(&body);
            }
            let mut r = PktReader::new(&wire[..]);
            while let Ok(Some(_)) = r.read_packet() {}
        }

        #[test]
        fn framed_content_reads_back(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..70_000), 0..4)) {
            let mut wire = Vec::new();
            let mut all = Vec::new();
            {
                let mut w = PktWriter::new(&mut wire);
                let mut c = w.content();
                for chunk in &chunks {
                    c.write_all(chunk).unwrap();
                    all.extend_from_slice(chunk);
                }
                c.finish().unwrap();
                w.flush_pkt().unwrap();
            }
            let mut back = Vec::new();
            PktReader::new(&wire[..]).content().read_to_end(&mut back).unwrap();
            prop_assert_eq!(&back, &all);
            // Through a buffer smaller than a packet: payloads straddle its end.
            let mut back = Vec::new();
            PktReader::new(io::BufReader::with_capacity(1000, &wire[..]))
                .content()
                .read_to_end(&mut back)
                .unwrap();
            prop_assert_eq!(back, all);
        }
    }
}
