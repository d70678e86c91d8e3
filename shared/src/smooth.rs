//! Collections that grow without pauses. A `HashMap` or `VecDeque` of a few hundred thousand
//! entries doubles in one step: rehash or copy everything into freshly faulted memory, tens of
//! milliseconds during which the thread holding it (the queue writer, a request holding a lock)
//! answers nobody. These grow in small pieces instead.

use std::collections::{HashMap, VecDeque};

/// Number of sub-maps in a [`ShardedMap`] (and of locks where callers shard by hand): each grows
/// on its own, at 1/64 of the size.
pub const SHARDS: usize = 64;

/// The shard an already well-mixed `u64` hash belongs to: its top bits.
pub fn shard_of(hash: u64) -> usize {
    (hash >> (64 - SHARDS.trailing_zeros())) as usize
}

/// A map keyed by an already well-mixed `u64` hash, split into [`SHARDS`] maps by its top bits.
pub struct ShardedMap<V> {
    shards: Vec<HashMap<u64, V>>,
    len: usize,
}

impl<V> Default for ShardedMap<V> {
    fn default() -> Self {
        Self { shards: (0..SHARDS).map(|_| HashMap::new()).collect(), len: 0 }
    }
}

impl<V> ShardedMap<V> {
    pub fn get(&self, hash: u64) -> Option<&V> {
        self.shards[shard_of(hash)].get(&hash)
    }

    /// Inserts or updates through `update`, which gets the current value if any.
    pub fn upsert(&mut self, hash: u64, update: impl FnOnce(Option<V>) -> V) {
        let shard = &mut self.shards[shard_of(hash)];
        let current = shard.remove(&hash);
        if current.is_none() {
            self.len += 1;
        }
        shard.insert(hash, update(current));
    }

    /// Changes the value through `change`, which returns `None` to remove it.
    pub fn modify(&mut self, hash: u64, change: impl FnOnce(V) -> Option<V>) {
        let shard = &mut self.shards[shard_of(hash)];
        if let Some(current) = shard.remove(&hash) {
            match change(current) {
                Some(value) => {
                    shard.insert(hash, value);
                }
                None => self.len -= 1,
            }
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A FIFO queue stored as fixed-size chunks: pushing never copies what is already queued.
pub struct ChunkedQueue<T> {
    chunks: VecDeque<Vec<T>>,
    /// Index of the front element in the first chunk.
    head: usize,
    len: usize,
}

const CHUNK: usize = 4096;

impl<T> Default for ChunkedQueue<T> {
    fn default() -> Self {
        Self { chunks: VecDeque::new(), head: 0, len: 0 }
    }
}

impl<T: Copy> ChunkedQueue<T> {
    pub fn push_back(&mut self, item: T) {
        match self.chunks.back_mut() {
            Some(last) if last.len() < CHUNK => last.push(item),
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(item);
                self.chunks.push_back(chunk);
            }
        }
        self.len += 1;
    }

    pub fn front(&self) -> Option<T> {
        self.chunks.front().and_then(|first| first.get(self.head).copied())
    }

    pub fn pop_front(&mut self) -> Option<T> {
        let item = self.front()?;
        self.head += 1;
        self.len -= 1;
        if self.chunks.front().is_some_and(|first| self.head == first.len() && (first.len() == CHUNK || self.len == 0))
        {
            self.chunks.pop_front();
            self.head = 0;
        }
        Some(item)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_queue_is_fifo_across_chunks() {
        let mut queue = ChunkedQueue::default();
        for n in 0..(3 * CHUNK + 5) {
            queue.push_back(n);
        }
        for n in 0..(2 * CHUNK) {
            assert_eq!(queue.pop_front(), Some(n));
        }
        queue.push_back(usize::MAX);
        assert_eq!(queue.len(), CHUNK + 6);
        let rest: Vec<usize> = std::iter::from_fn(|| queue.pop_front()).collect();
        assert_eq!(rest.len(), CHUNK + 6);
        assert_eq!(rest[0], 2 * CHUNK);
        assert_eq!(rest.last(), Some(&usize::MAX));
        assert!(queue.is_empty() && queue.front().is_none());
        queue.push_back(7);
        assert_eq!(queue.pop_front(), Some(7));
    }

    #[test]
    fn sharded_map_counts_and_updates() {
        let mut map = ShardedMap::default();
        let hashes = [0, 1, u64::MAX, 1 << 63, 42 << 58];
        for hash in hashes {
            map.upsert(hash, |old| old.unwrap_or(0) + 1);
        }
        map.upsert(1, |old| old.unwrap_or(0) + 1);
        assert_eq!(map.len(), hashes.len());
        assert_eq!(map.get(1), Some(&2));
        map.modify(1, |v| Some(v * 10));
        assert_eq!(map.get(1), Some(&20));
        map.modify(u64::MAX, |_| None);
        map.modify(12345, |_| unreachable!("absent keys are not visited"));
        assert_eq!(map.len(), hashes.len() - 1);
        assert!(map.get(u64::MAX).is_none());
        assert_eq!(shard_of(u64::MAX), SHARDS - 1);
        assert_eq!(shard_of(0), 0);
    }
}
