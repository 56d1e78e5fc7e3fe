//! The rendezvous: rank 0 hands one small blob (NCCL's unique id) to every other rank over TCP
//! at `MASTER_ADDR:MASTER_PORT`, as torchrun's store does. Rank 0 listens on every interface at
//! that port; the others connect, retrying until a deadline (rank 0 may start later), and a
//! rank that cannot reach it fails with an error naming the address.
//!
//! The exchange, both ways length-prefixed:
//!   rank r → rank 0:  "SMELTRDV", version, r, world size        (u32 little-endian each)
//!   rank 0 → rank r:  status (0 ok, 1 refused), length, blob or the reason it was refused
//! Rank 0 returns once every other rank has been answered, so after `exchange` every rank
//! holds the blob, or every rank that got this far has an error.

use super::DistEnv;
use anyhow::{anyhow, bail, Context, Result};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

const MAGIC: &[u8; 8] = b"SMELTRDV";
const VERSION: u32 = 1;
/// Largest blob or message accepted (NCCL's id is 128 bytes).
const MAX_LEN: u32 = 1 << 20;

/// How long ranks wait for each other: `SMELT_RENDEZVOUS_TIMEOUT` seconds, else 300 (the
/// ranks of a cluster job do not all start at once).
pub fn default_timeout() -> Duration {
    let s = std::env::var("SMELT_RENDEZVOUS_TIMEOUT").ok().and_then(|v| v.parse::<f64>().ok()).filter(|s| *s > 0.0);
    Duration::from_secs_f64(s.unwrap_or(300.0))
}

/// Rank 0 passes `blob` and gets it back; every other rank passes None and gets rank 0's.
pub fn exchange(env: &DistEnv, blob: Option<&[u8]>, timeout: Duration) -> Result<Vec<u8>> {
    match (env.rank, blob) {
        (0, Some(b)) => serve(env, b, timeout).map(|_| b.to_vec()),
        (0, None) => bail!("rendezvous: rank 0 must provide the blob"),
        (_, _) => fetch(env, timeout),
    }
}

fn serve(env: &DistEnv, blob: &[u8], timeout: Duration) -> Result<()> {
    if env.world_size == 1 {
        return Ok(());
    }
    let at = SocketAddr::from((Ipv4Addr::UNSPECIFIED, env.master_port));
    let listener = TcpListener::bind(at).with_context(|| {
        format!("rank 0: cannot listen for the rendezvous on port {} (MASTER_PORT; is it in use?)", env.master_port)
    })?;
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    let mut seen = vec![false; env.world_size];
    seen[0] = true;
    while seen.iter().any(|s| !s) {
        match listener.accept() {
            Ok((mut s, peer)) => {
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(Duration::from_secs(30)))?;
                s.set_write_timeout(Some(Duration::from_secs(30)))?;
                // A stray connection (a port scanner, an old job) is not a rank: drop it.
                let Ok((rank, world)) = read_hello(&mut s) else {
                    continue;
                };
                let refusal = if world != env.world_size {
                    Some(format!("rank {rank} says WORLD_SIZE={world}, rank 0 has {}", env.world_size))
                } else if rank == 0 || rank >= world {
                    Some(format!("RANK={rank} is not a rank of WORLD_SIZE={world} other than 0"))
                } else if seen[rank] {
                    Some(format!("two processes claim RANK={rank}"))
                } else {
                    None
                };
                match refusal {
                    Some(why) => {
                        let _ = reply(&mut s, 1, why.as_bytes());
                        bail!("rendezvous at {}: {why} (from {peer})", env.master());
                    }
                    None => {
                        reply(&mut s, 0, blob)
                            .with_context(|| format!("rendezvous: answering rank {rank} at {peer}"))?;
                        seen[rank] = true;
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<String> =
                        seen.iter().enumerate().filter(|(_, s)| !**s).map(|(r, _)| r.to_string()).collect();
                    bail!(
                        "rendezvous at {}: rank(s) {} did not arrive within {:.0} s (SMELT_RENDEZVOUS_TIMEOUT)",
                        env.master(),
                        missing.join(", "),
                        timeout.as_secs_f64()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(anyhow!("rendezvous at {}: accept: {e}", env.master())),
        }
    }
    Ok(())
}

fn fetch(env: &DistEnv, timeout: Duration) -> Result<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match try_fetch(env) {
            Ok(Ok(blob)) => return Ok(blob),
            Ok(Err(refused)) => bail!("rank {}: the rendezvous at {} refused it: {refused}", env.rank, env.master()),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!(
                "rank {}: cannot reach rank 0's rendezvous at {} (MASTER_ADDR:MASTER_PORT) within {:.0} s: {last}",
                env.rank,
                env.master(),
                timeout.as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One attempt: Err when the connection failed (retry), Ok(Err) when rank 0 refused (final).
fn try_fetch(env: &DistEnv) -> Result<std::result::Result<Vec<u8>, String>> {
    let addrs: Vec<SocketAddr> = (env.master_addr.as_str(), env.master_port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {}", env.master_addr))?
        .collect();
    let mut err = anyhow!("{} resolves to no address", env.master_addr);
    for a in addrs {
        match TcpStream::connect_timeout(&a, Duration::from_secs(5)) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(30)))?;
                s.set_write_timeout(Some(Duration::from_secs(30)))?;
                let mut hello = MAGIC.to_vec();
                for v in [VERSION, env.rank as u32, env.world_size as u32] {
                    hello.extend_from_slice(&v.to_le_bytes());
                }
                s.write_all(&hello)?;
                let mut status = [0u8; 1];
                s.read_exact(&mut status)?;
                let body = read_blob(&mut s)?;
                return Ok(match status[0] {
                    0 => Ok(body),
                    _ => Err(String::from_utf8_lossy(&body).into_owned()),
                });
            }
            Err(e) => err = anyhow!("{a}: {e}"),
        }
    }
    Err(err)
}

fn read_u32(s: &mut TcpStream) -> Result<u32> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_hello(s: &mut TcpStream) -> Result<(usize, usize)> {
    let mut m = [0u8; 8];
    s.read_exact(&mut m)?;
    if &m != MAGIC || read_u32(s)? != VERSION {
        bail!("not a smelt rendezvous hello");
    }
    Ok((read_u32(s)? as usize, read_u32(s)? as usize))
}

fn read_blob(s: &mut TcpStream) -> Result<Vec<u8>> {
    let n = read_u32(s)?;
    if n > MAX_LEN {
        bail!("rendezvous: a {n}-byte answer (at most {MAX_LEN})");
    }
    let mut v = vec![0u8; n as usize];
    s.read_exact(&mut v)?;
    Ok(v)
}

fn reply(s: &mut TcpStream, status: u8, body: &[u8]) -> Result<()> {
    let mut msg = vec![status];
    msg.extend_from_slice(&(body.len() as u32).to_le_bytes());
    msg.extend_from_slice(body);
    s.write_all(&msg)?;
    Ok(())
}

/// A port no one listens on now (bind port 0, read what the system gave, let it go): what
/// `--nproc` puts in MASTER_PORT. Another process could take it in between; the rendezvous
/// then fails with the port named.
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port for the rendezvous")?;
    Ok(l.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(rank: usize, world: usize, port: u16) -> DistEnv {
        DistEnv {
            rank,
            local_rank: rank,
            world_size: world,
            local_world_size: world,
            master_addr: "127.0.0.1".into(),
            master_port: port,
        }
    }

    #[test]
    fn every_rank_gets_rank_zeros_blob() {
        let port = free_port().unwrap();
        let blob: Vec<u8> = (0..128u8).collect();
        // The other ranks start first: they retry until rank 0 listens.
        let others: Vec<_> = (1..4)
            .map(|r| std::thread::spawn(move || exchange(&env(r, 4, port), None, Duration::from_secs(20))))
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let got0 = exchange(&env(0, 4, port), Some(&blob), Duration::from_secs(20)).unwrap();
        assert_eq!(got0, blob);
        for t in others {
            assert_eq!(t.join().unwrap().unwrap(), blob);
        }
    }

    #[test]
    fn an_unreachable_rank_zero_is_named() {
        let port = free_port().unwrap();
        let e = exchange(&env(1, 2, port), None, Duration::from_millis(500)).unwrap_err().to_string();
        assert!(e.contains(&format!("127.0.0.1:{port}")) && e.contains("rank 1"), "{e}");
    }

    #[test]
    fn missing_and_mismatched_ranks_fail_with_the_reason() {
        let port = free_port().unwrap();
        let e = exchange(&env(0, 3, port), Some(b"id"), Duration::from_millis(500)).unwrap_err().to_string();
        assert!(e.contains("rank(s) 1, 2 did not arrive"), "{e}");

        let port = free_port().unwrap();
        let wrong = std::thread::spawn(move || exchange(&env(1, 3, port), None, Duration::from_secs(20)));
        let e = exchange(&env(0, 2, port), Some(b"id"), Duration::from_secs(20)).unwrap_err().to_string();
        assert!(e.contains("WORLD_SIZE=3"), "{e}");
        let e = wrong.join().unwrap().unwrap_err().to_string();
        assert!(e.contains("refused") && e.contains("WORLD_SIZE=3"), "{e}");
    }
}
