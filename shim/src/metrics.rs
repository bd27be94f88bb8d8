//! Task metrics (`Stats`): cgroup v1 statistics as containerd's
//! `io.containerd.cgroups.v1.Metrics` (pids, cpu and memory).
//! Hosts with only the unified (v2) hierarchy get `Unimplemented`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use berth_errdefs::ErrorKind;
use berth_proto::io::containerd::cgroups::v1::{
    CpuStat, CpuUsage, MemoryEntry, MemoryStat, Metrics, PidsStat, Throttle,
};
use prost::{Message, Name};

use crate::error::{Error, Result};

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
        type_url: Metrics::full_name(),
        value: metrics.encode_to_vec(),
    })
}
