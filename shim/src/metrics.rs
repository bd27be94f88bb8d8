//! Task metrics (`Stats`): cgroup v1 statistics as containerd's
//! `io.containerd.cgroups.v1.Metrics` (pids, cpu and memory; the message types below mirror
//! containerd/cgroups `stats/v1/metrics.proto`, field numbers included, for the fields filled).
//! Hosts with only the unified (v2) hierarchy get `Unimplemented`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use berth_errdefs::ErrorKind;
use prost::Message;

use crate::error::{Error, Result};

/// containerd's type URL for cgroup v1 metrics.
pub const METRICS_V1_TYPE_URL: &str = "io.containerd.cgroups.v1.Metrics";

/// `io.containerd.cgroups.v1.Metrics` (subset: pids, cpu, memory).
#[derive(Clone, PartialEq, Message)]
pub struct Metrics {
    #[prost(message, optional, tag = "2")]
    pub pids: Option<PidsStat>,
    #[prost(message, optional, tag = "3")]
    pub cpu: Option<CpuStat>,
    #[prost(message, optional, tag = "4")]
    pub memory: Option<MemoryStat>,
}

#[derive(Clone, PartialEq, Message)]
pub struct PidsStat {
    #[prost(uint64, tag = "1")]
    pub current: u64,
    #[prost(uint64, tag = "2")]
    pub limit: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct CpuStat {
    #[prost(message, optional, tag = "1")]
    pub usage: Option<CpuUsage>,
    #[prost(message, optional, tag = "2")]
    pub throttling: Option<Throttle>,
}

#[derive(Clone, PartialEq, Message)]
pub struct CpuUsage {
    /// Nanoseconds.
    #[prost(uint64, tag = "1")]
    pub total: u64,
    #[prost(uint64, tag = "2")]
    pub kernel: u64,
    #[prost(uint64, tag = "3")]
    pub user: u64,
    #[prost(uint64, repeated, tag = "4")]
    pub per_cpu: Vec<u64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Throttle {
    #[prost(uint64, tag = "1")]
    pub periods: u64,
    #[prost(uint64, tag = "2")]
    pub throttled_periods: u64,
    #[prost(uint64, tag = "3")]
    pub throttled_time: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct MemoryEntry {
    #[prost(uint64, tag = "1")]
    pub limit: u64,
    #[prost(uint64, tag = "2")]
    pub usage: u64,
    #[prost(uint64, tag = "3")]
    pub max: u64,
    #[prost(uint64, tag = "4")]
    pub failcnt: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct MemoryStat {
    #[prost(uint64, tag = "1")]
    pub cache: u64,
    #[prost(uint64, tag = "2")]
    pub rss: u64,
    #[prost(uint64, tag = "3")]
    pub rss_huge: u64,
    #[prost(uint64, tag = "4")]
    pub mapped_file: u64,
    #[prost(uint64, tag = "5")]
    pub dirty: u64,
    #[prost(uint64, tag = "6")]
    pub writeback: u64,
    #[prost(uint64, tag = "7")]
    pub pg_pg_in: u64,
    #[prost(uint64, tag = "8")]
    pub pg_pg_out: u64,
    #[prost(uint64, tag = "9")]
    pub pg_fault: u64,
    #[prost(uint64, tag = "10")]
    pub pg_maj_fault: u64,
    #[prost(uint64, tag = "11")]
    pub inactive_anon: u64,
    #[prost(uint64, tag = "12")]
    pub active_anon: u64,
    #[prost(uint64, tag = "13")]
    pub inactive_file: u64,
    #[prost(uint64, tag = "14")]
    pub active_file: u64,
    #[prost(uint64, tag = "15")]
    pub unevictable: u64,
    #[prost(uint64, tag = "16")]
    pub hierarchical_memory_limit: u64,
    #[prost(uint64, tag = "17")]
    pub hierarchical_swap_limit: u64,
    #[prost(uint64, tag = "18")]
    pub total_cache: u64,
    #[prost(uint64, tag = "19")]
    pub total_rss: u64,
    #[prost(uint64, tag = "20")]
    pub total_rss_huge: u64,
    #[prost(uint64, tag = "21")]
    pub total_mapped_file: u64,
    #[prost(uint64, tag = "22")]
    pub total_dirty: u64,
    #[prost(uint64, tag = "23")]
    pub total_writeback: u64,
    #[prost(uint64, tag = "24")]
    pub total_pg_pg_in: u64,
    #[prost(uint64, tag = "25")]
    pub total_pg_pg_out: u64,
    #[prost(uint64, tag = "26")]
    pub total_pg_fault: u64,
    #[prost(uint64, tag = "27")]
    pub total_pg_maj_fault: u64,
    #[prost(uint64, tag = "28")]
    pub total_inactive_anon: u64,
    #[prost(uint64, tag = "29")]
    pub total_active_anon: u64,
    #[prost(uint64, tag = "30")]
    pub total_inactive_file: u64,
    #[prost(uint64, tag = "31")]
    pub total_active_file: u64,
    #[prost(uint64, tag = "32")]
    pub total_unevictable: u64,
    #[prost(message, optional, tag = "33")]
    pub usage: Option<MemoryEntry>,
    #[prost(message, optional, tag = "34")]
    pub swap: Option<MemoryEntry>,
    #[prost(message, optional, tag = "35")]
    pub kernel: Option<MemoryEntry>,
    #[prost(message, optional, tag = "36")]
    pub kernel_tcp: Option<MemoryEntry>,
}

/// The v1 hierarchies of a process: controller → directory of its cgroup.
pub(crate) fn cgroup_dirs(pid: u32) -> Result<HashMap<String, PathBuf>> {
    let path = format!("/proc/{pid}/cgroup");
    let data = std::fs::read_to_string(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::not_found(format!("process {pid} is gone"))
        } else {
            Error::io(format!("read {path}"), e)
        }
    })?;
    let mut dirs = HashMap::new();
    for line in data.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, cg) = match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), Some(c)) => (a, b, c),
            _ => continue,
        };
        if controllers.is_empty() {
            continue; // the unified hierarchy
        }
        let mount = Path::new("/sys/fs/cgroup").join(controllers);
        let dir = mount.join(cg.trim_start_matches('/'));
        for c in controllers.split(',') {
            dirs.insert(c.to_string(), dir.clone());
        }
    }
    Ok(dirs)
}

fn read_u64(dir: &Path, file: &str) -> Option<u64> {
    let s = std::fs::read_to_string(dir.join(file)).ok()?;
    let s = s.trim();
    if s == "max" {
        return Some(0);
    }
    s.parse().ok()
}

fn read_kv(dir: &Path, file: &str) -> HashMap<String, u64> {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

fn memory_entry(dir: &Path, prefix: &str) -> Option<MemoryEntry> {
    Some(MemoryEntry {
        usage: read_u64(dir, &format!("{prefix}usage_in_bytes"))?,
        limit: read_u64(dir, &format!("{prefix}limit_in_bytes")).unwrap_or(0),
        max: read_u64(dir, &format!("{prefix}max_usage_in_bytes")).unwrap_or(0),
        failcnt: read_u64(dir, &format!("{prefix}failcnt")).unwrap_or(0),
    })
}

fn memory(dir: &Path) -> MemoryStat {
    let s = read_kv(dir, "memory.stat");
    let g = |k: &str| s.get(k).copied().unwrap_or(0);
    MemoryStat {
        cache: g("cache"),
        rss: g("rss"),
        rss_huge: g("rss_huge"),
        mapped_file: g("mapped_file"),
        dirty: g("dirty"),
        writeback: g("writeback"),
        pg_pg_in: g("pgpgin"),
        pg_pg_out: g("pgpgout"),
        pg_fault: g("pgfault"),
        pg_maj_fault: g("pgmajfault"),
        inactive_anon: g("inactive_anon"),
        active_anon: g("active_anon"),
        inactive_file: g("inactive_file"),
        active_file: g("active_file"),
        unevictable: g("unevictable"),
        hierarchical_memory_limit: g("hierarchical_memory_limit"),
        hierarchical_swap_limit: g("hierarchical_memsw_limit"),
        total_cache: g("total_cache"),
        total_rss: g("total_rss"),
        total_rss_huge: g("total_rss_huge"),
        total_mapped_file: g("total_mapped_file"),
        total_dirty: g("total_dirty"),
        total_writeback: g("total_writeback"),
        total_pg_pg_in: g("total_pgpgin"),
        total_pg_pg_out: g("total_pgpgout"),
        total_pg_fault: g("total_pgfault"),
        total_pg_maj_fault: g("total_pgmajfault"),
        total_inactive_anon: g("total_inactive_anon"),
        total_active_anon: g("total_active_anon"),
        total_inactive_file: g("total_inactive_file"),
        total_active_file: g("total_active_file"),
        total_unevictable: g("total_unevictable"),
        usage: memory_entry(dir, "memory."),
        swap: memory_entry(dir, "memory.memsw."),
        kernel: memory_entry(dir, "memory.kmem."),
        kernel_tcp: memory_entry(dir, "memory.kmem.tcp."),
    }
}

fn cpu(acct: Option<&PathBuf>, cpu: Option<&PathBuf>) -> CpuStat {
    let usage = acct.map(|d| {
        // cpuacct.stat counts USER_HZ ticks.
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        let stat = read_kv(d, "cpuacct.stat");
        let ns = |k: &str| stat.get(k).copied().unwrap_or(0) * 1_000_000_000 / hz;
        CpuUsage {
            total: read_u64(d, "cpuacct.usage").unwrap_or(0),
            kernel: ns("system"),
            user: ns("user"),
            per_cpu: std::fs::read_to_string(d.join("cpuacct.usage_percpu"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect(),
        }
    });
    let throttling = cpu.map(|d| {
        let s = read_kv(d, "cpu.stat");
        let g = |k: &str| s.get(k).copied().unwrap_or(0);
        Throttle {
            periods: g("nr_periods"),
            throttled_periods: g("nr_throttled"),
            throttled_time: g("throttled_time"),
        }
    });
    CpuStat { usage, throttling }
}

/// The cgroup metrics of the task whose init is `pid`.
pub fn collect(pid: u32) -> Result<prost_types::Any> {
    let dirs = cgroup_dirs(pid)?;
    if dirs.is_empty() {
        return Err(Error::new(
            ErrorKind::NotImplemented,
            "task metrics need cgroup v1 controllers; this host has only the unified hierarchy",
        ));
    }
    let metrics = Metrics {
        pids: dirs.get("pids").map(|d| PidsStat {
            current: read_u64(d, "pids.current").unwrap_or(0),
            limit: read_u64(d, "pids.max").unwrap_or(0),
        }),
        cpu: Some(cpu(dirs.get("cpuacct"), dirs.get("cpu"))),
        memory: dirs.get("memory").map(|d| memory(d)),
    };
    Ok(prost_types::Any {
        type_url: METRICS_V1_TYPE_URL.to_string(),
        value: metrics.encode_to_vec(),
    })
}
