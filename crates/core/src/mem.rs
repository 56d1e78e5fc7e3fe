//! How much memory a device can still give: checked before a large allocation, so that a flag or
//! a file claiming too much is refused with the estimate instead of aborting (or swapping) later.
//! What a model or a run needs is estimated by its owner (`smelt_model::memory`).

use crate::Device;
use anyhow::{bail, Result};

/// Bytes that can still be allocated on `device`, when known: on the CPU the least of
/// /proc/meminfo's MemAvailable, the cgroup's memory.max headroom and the address-space limit
/// (`ulimit -v`) headroom; on a GPU the driver's free memory (cuMemGetInfo).
pub fn available(device: Device) -> Option<u64> {
    match device {
        Device::Cpu => cpu_available(),
        #[cfg(feature = "cuda")]
        Device::Cuda(n) => crate::cuda::gpu(n).ok()?.ctx.mem_get_info().ok().map(|(free, _)| free as u64),
    }
}

fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find(|l| l.starts_with(key))?.split_whitespace().nth(1)?.parse::<u64>().ok().map(|k| k * 1024)
}

fn cpu_available() -> Option<u64> {
    let mut best: Option<u64> = None;
    let mut take = |v: Option<u64>| {
        if let Some(v) = v {
            best = Some(best.map_or(v, |b| b.min(v)));
        }
    };
    take(std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| kib_field(&t, "MemAvailable:")));
    let cg = |f: &str| {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{f}")).ok().and_then(|s| s.trim().parse::<u64>().ok())
    };
    if let (Some(max), Some(cur)) = (cg("memory.max"), cg("memory.current")) {
        take(Some(max.saturating_sub(cur)));
    }
    take(address_space_left());
    best
}

#[cfg(unix)]
fn address_space_left() -> Option<u64> {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut r) } != 0 || r.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    let used = std::fs::read_to_string("/proc/self/status").ok().and_then(|t| kib_field(&t, "VmSize:")).unwrap_or(0);
    Some(r.rlim_cur.saturating_sub(used))
}

#[cfg(not(unix))]
fn address_space_left() -> Option<u64> {
    None
}

/// Human-readable bytes: "512.0 MiB", "3.25 GiB".
pub fn human(bytes: f64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    if bytes >= GIB {
        format!("{:.2} GiB", bytes / GIB)
    } else {
        format!("{:.1} MiB", bytes / (1u64 << 20) as f64)
    }
}

/// Refuses `what` when it needs more than `device` has available (when that is known).
/// `need` is an estimate in bytes (f64: the product of absurd flags must not overflow).
pub fn ensure_fits(device: Device, need: f64, what: &str) -> Result<()> {
    let Some(avail) = available(device) else {
        return Ok(());
    };
    if need > avail as f64 {
        bail!(
            "{what} needs about {} of memory, but {device} has {} available; refusing before allocating",
            human(need),
            human(avail as f64)
        );
    }
    Ok(())
}

/// Keeps freed heap memory for reuse instead of giving it back to the kernel (glibc on Linux;
/// nothing elsewhere): buffers up to 32 MiB come from the heap rather than their own `mmap`,
/// and the heap's free top is not trimmed below 1 GiB. Every op of a prompt's forward allocates
/// its activations (MiBs each); with glibc's defaults many of them were fresh mappings, so each
/// page was faulted in and zeroed by the kernel again (246k page faults in a three-prompt q8_0
/// bench, ~10% of its CPU time; 49k with this). `SMELT_MALLOC_DEFAULT=1` keeps glibc's
/// defaults. Call once, first thing in `main`.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("SMELT_MALLOC_DEFAULT").is_none_or(|v| v.is_empty() || v == "0") {
        // SAFETY: mallopt only sets the allocator's parameters; called before other threads.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        }
    }
}

/// A zeroed `Vec<f32>` of `len`, zeroed by `par`'s threads when it is large: a
/// product's output zeroed on one thread (a memset, and the first touch of its pages) is a
/// serial part of every parallel matmul, which grows with the thread count.
pub fn zeros(len: usize) -> Vec<f32> {
    const SERIAL: usize = 1 << 16;
    if len <= SERIAL {
        return vec![0f32; len];
    }
    let mut v = crate::par::uninit::<f32>(len);
    crate::par::chunks_mut(&mut v, SERIAL, |_, c| {
        c.iter_mut().for_each(|x| {
            x.write(0.0);
        })
    });
    // SAFETY: all `len` elements were written.
    unsafe { crate::par::assume_init(v) }
}
