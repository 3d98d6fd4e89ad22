//! The trace's cycles, with the older ones of a long trace on disk: a trace of 100,000 cycles
//! holds the same memory as one of 2,000.
//!
//! The timeline keeps its latest cycles in memory (see `timeline::FULL_CYCLES`); older ones,
//! already compacted, are written as JSON lines to an unnamed temporary file ([`Spill`]), and
//! what the analysis reads of them is kept in a bounded digest ([`History`]). When the trace is
//! written, the spilled cycles are copied into its `cycles` array ahead of those in memory, so
//! the JSON is the same as if every cycle had stayed in memory; `leaktrace report` reads them
//! all back.

use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Seek, SeekFrom, Write},
    ops::{Deref, DerefMut},
    os::unix::fs::{FileExt, OpenOptionsExt},
    path::Path,
    sync::Arc,
};

use serde::{Deserialize, Deserializer, Serialize, Serializer, ser::SerializeSeq};
use serde_json::value::RawValue;

use super::{cycle::Cycle, digest::History};

/// Older cycles written out, one JSON object per line, oldest first.
#[derive(Debug)]
pub struct Spill {
    file: File,
    /// Bytes written whole: a failed write is cut back to this.
    len: u64,
    count: usize,
    history: History,
}

impl Spill {
    /// An unnamed file in `dir` (O_TMPFILE: it never has a name anyone could open or replace,
    /// and the kernel frees it when leaktrace exits, however it exits).
    pub fn create(dir: &Path) -> std::io::Result<Spill> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .mode(0o600)
            .open(dir)?;
        Ok(Spill {
            file,
            len: 0,
            count: 0,
            history: History::default(),
        })
    }

    /// Writes one (compacted) cycle out and takes it into the digest.
    pub fn push(&mut self, cycle: &Cycle) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(cycle).map_err(std::io::Error::other)?;
        line.push(b'\n');
        if let Err(error) = (&self.file).write_all(&line) {
            // Nothing half-written stays: the file ends at the last whole cycle.
            let _ = self.file.set_len(self.len);
            let _ = (&self.file).seek(SeekFrom::Start(self.len));
            return Err(error);
        }
        self.len += line.len() as u64;
        self.count += 1;
        self.history.add(cycle);
        Ok(())
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// What the analysis reads of the spilled cycles.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// The same file and the cycles spilled so far, for a report written while the trace goes
    /// on: cycles spilled after this are not in the copy. Reads are positional, so the copy
    /// and the original never move each other's offset.
    pub fn share(&self) -> std::io::Result<Spill> {
        Ok(Spill {
            file: self.file.try_clone()?,
            len: self.len,
            count: self.count,
            history: self.history.clone(),
        })
    }

    /// The spilled cycles' JSON lines, oldest first.
    fn lines(&self) -> impl Iterator<Item = std::io::Result<String>> + '_ {
        let mut reader = BufReader::new(At {
            file: &self.file,
            at: 0,
            end: self.len,
        });
        std::iter::from_fn(move || {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) => None,
                Ok(_) => Some(Ok(line)),
                Err(error) => Some(Err(error)),
            }
        })
        .take(self.count)
    }

    /// The spilled cycles themselves, oldest first (a line that cannot be read ends them).
    pub fn cycles(&self) -> impl Iterator<Item = Cycle> + '_ {
        self.lines()
            .map_while(|line| serde_json::from_str(&line.ok()?).ok())
    }
}

/// Reads a file from a position of its own (pread), up to `end`, leaving the file's offset
/// (where the spill writes) alone.
struct At<'a> {
    file: &'a File,
    at: u64,
    end: u64,
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.end.saturating_sub(self.at).min(buf.len() as u64) as usize;
        let read = self.file.read_at(&mut buf[..left], self.at)?;
        self.at += read as u64;
        Ok(read)
    }
}

/// A trace's cycles: those still in memory (what `Deref` gives), after those spilled, if any.
#[derive(Clone, Debug, Default)]
pub struct Cycles {
    spilled: Option<Arc<Spill>>,
    in_memory: Vec<Cycle>,
}

impl Cycles {
    pub fn new(spilled: Option<Spill>, in_memory: Vec<Cycle>) -> Cycles {
        Cycles {
            spilled: spilled.filter(|s| s.count > 0).map(Arc::new),
            in_memory,
        }
    }

    /// The cycles written to disk during the trace, if any: they come before those in memory.
    pub fn spilled(&self) -> Option<&Spill> {
        self.spilled.as_deref()
    }

    /// Every cycle, in memory or not.
    pub fn count(&self) -> usize {
        self.spilled.as_ref().map_or(0, |s| s.count) + self.in_memory.len()
    }

    /// The digest of every measured cycle, for the analysis.
    pub fn history(&self) -> History {
        let mut history = self
            .spilled
            .as_ref()
            .map(|s| s.history.clone())
            .unwrap_or_default();
        history.extend(&self.in_memory);
        history
    }
}

impl From<Vec<Cycle>> for Cycles {
    fn from(in_memory: Vec<Cycle>) -> Cycles {
        Cycles::new(None, in_memory)
    }
}

impl Deref for Cycles {
    type Target = Vec<Cycle>;
    fn deref(&self) -> &Vec<Cycle> {
        &self.in_memory
    }
}

impl DerefMut for Cycles {
    fn deref_mut(&mut self) -> &mut Vec<Cycle> {
        &mut self.in_memory
    }
}

/// Equal when the same cycles are in memory and as many were spilled.
impl PartialEq for Cycles {
    fn eq(&self, other: &Cycles) -> bool {
        self.in_memory == other.in_memory
            && self.spilled.as_ref().map(|s| s.count) == other.spilled.as_ref().map(|s| s.count)
    }
}

impl Serialize for Cycles {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.count()))?;
        if let Some(spill) = &self.spilled {
            for line in spill.lines() {
                let line = line.map_err(serde::ser::Error::custom)?;
                let raw = RawValue::from_string(line.trim_end().to_string())
                    .map_err(serde::ser::Error::custom)?;
                seq.serialize_element(&raw)?;
            }
        }
        for cycle in &self.in_memory {
            seq.serialize_element(cycle)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Cycles {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Cycles, D::Error> {
        Vec::<Cycle>::deserialize(deserializer).map(Cycles::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cycle(index: u32) -> Cycle {
        let mut cycle = Cycle {
            index,
            start_s: f64::from(index),
            end_s: f64::from(index) + 1.0,
            ..Cycle::default()
        };
        cycle
            .worker
            .insert("heapUsed".into(), 1e6 * f64::from(index));
        cycle.compact();
        cycle
    }

    #[test]
    fn spilled_cycles_come_back_before_those_in_memory_byte_for_byte() {
        let mut spill = Spill::create(&std::env::temp_dir()).unwrap();
        for index in 1..=3 {
            spill.push(&cycle(index)).unwrap();
        }
        assert_eq!(spill.history().cycles(), 3);
        let back: Vec<u32> = spill.cycles().map(|c| c.index).collect();
        assert_eq!(back, [1, 2, 3]);
        // A copy taken now keeps its three while the original goes on, reading between writes.
        let shared = spill.share().unwrap();
        spill.push(&cycle(4)).unwrap();
        assert_eq!(shared.cycles().count(), 3);
        spill.push(&cycle(5)).unwrap();
        let back: Vec<u32> = spill.cycles().map(|c| c.index).collect();
        assert_eq!(back, [1, 2, 3, 4, 5]);
        let mut spill = Spill::create(&std::env::temp_dir()).unwrap();
        for index in 1..=3 {
            spill.push(&cycle(index)).unwrap();
        }
        let cycles = Cycles::new(Some(spill), vec![cycle(4), cycle(5)]);
        assert_eq!((cycles.count(), cycles.len()), (5, 2));
        assert_eq!(cycles.history().cycles(), 5);
        let json = serde_json::to_string(&cycles).unwrap();
        let all: Vec<Cycle> = (1..=5).map(cycle).collect();
        assert_eq!(json, serde_json::to_string(&all).unwrap());
        let read: Cycles = serde_json::from_str(&json).unwrap();
        assert_eq!((read.count(), read.len()), (5, 5));
        assert_eq!(read.history().cycles(), 5);
    }
}
