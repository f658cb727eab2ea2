//! A numbered UDP stream for the no-loss tests: the receiver marks each sequence number it
//! gets; the sender's guard says when the stream is over (also when the sender panics).
//! Included with `#[path = "support/stream.rs"] mod stream;`.
#![allow(dead_code)]

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Receive datagrams whose first 4 bytes are a big-endian sequence number below `n` until
/// all arrived, or the sender is done (`sender_done`) and nothing came for two seconds.
/// `rx` needs a short read timeout. Returns which numbers arrived.
pub fn receive(rx: &UdpSocket, n: usize, sender_done: &AtomicBool) -> Vec<bool> {
    let mut seen = vec![false; n];
    let mut buf = [0u8; 64];
    let mut quiet_since: Option<Instant> = None;
    loop {
        match rx.recv(&mut buf) {
            Ok(len) if len >= 4 => {
                let seq = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
                if let Some(slot) = seen.get_mut(seq) {
                    *slot = true;
                }
                quiet_since = None;
                if seen.iter().all(|&x| x) {
                    break;
                }
            }
            Ok(_) => {}
            Err(_) => {
                if sender_done.load(Ordering::SeqCst) {
                    let q = *quiet_since.get_or_insert_with(Instant::now);
                    if q.elapsed() > Duration::from_secs(2) {
                        break;
                    }
                }
            }
        }
    }
    seen
}

/// Sets its flag when dropped: tells [`receive`] the stream is over, also on panic.
pub struct Done<'a>(pub &'a AtomicBool);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}
