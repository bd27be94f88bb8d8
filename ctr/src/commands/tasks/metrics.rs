//! Decoding of task metrics: containerd's `io.containerd.cgroups.v1.Metrics` (the fields ctr
//! prints; field numbers from containerd/cgroups `stats/v1/metrics.proto`).

use prost::Message;
use serde_json::{json, Value};

/// containerd's type URL of cgroup v1 metrics.
pub const V1_TYPE_URL: &str = "io.containerd.cgroups.v1.Metrics";

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
}

#[derive(Clone, PartialEq, Message)]
pub struct CpuUsage {
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
    #[prost(message, optional, tag = "33")]
    pub usage: Option<MemoryEntry>,
}

/// Whether an `Any` type URL names cgroup v1 metrics (with or without a `host/` prefix).
pub fn is_v1(type_url: &str) -> bool {
    type_url.rsplit('/').next() == Some(V1_TYPE_URL)
}

/// The rows ctr's `tasks metrics` prints for cgroup v1, as (metric, value).
pub fn rows(m: &Metrics) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(mem) = &m.memory {
        let usage = mem.usage.clone().unwrap_or_default();
        out.push(("memory.usage_in_bytes".into(), usage.usage.to_string()));
        out.push(("memory.limit_in_bytes".into(), usage.limit.to_string()));
        out.push(("memory.stat.cache".into(), mem.cache.to_string()));
    }
    if let Some(cpu) = m.cpu.as_ref().and_then(|c| c.usage.as_ref()) {
        out.push(("cpuacct.usage".into(), cpu.total.to_string()));
        out.push(("cpuacct.usage_percpu".into(), format!("{:?}", cpu.per_cpu)));
    }
    if let Some(p) = &m.pids {
        out.push(("pids.current".into(), p.current.to_string()));
        out.push(("pids.limit".into(), p.limit.to_string()));
    }
    out
}

/// The same figures as JSON, for `--format json`.
pub fn to_json(m: &Metrics) -> Value {
    let mut v = json!({});
    if let Some(mem) = &m.memory {
        let usage = mem.usage.clone().unwrap_or_default();
        v["memory"] = json!({
            "usage": usage.usage, "limit": usage.limit, "max_usage": usage.max,
            "failcnt": usage.failcnt, "cache": mem.cache, "rss": mem.rss,
        });
    }
    if let Some(cpu) = m.cpu.as_ref().and_then(|c| c.usage.as_ref()) {
        v["cpu"] = json!({
            "usage_total": cpu.total, "usage_kernel": cpu.kernel, "usage_user": cpu.user,
            "usage_percpu": cpu.per_cpu,
        });
    }
    if let Some(p) = &m.pids {
        v["pids"] = json!({"current": p.current, "limit": p.limit});
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_and_prints_v1_metrics() {
        let m = Metrics {
            pids: Some(PidsStat {
                current: 2,
                limit: 64,
            }),
            cpu: Some(CpuStat {
                usage: Some(CpuUsage {
                    total: 1000,
                    kernel: 400,
                    user: 600,
                    per_cpu: vec![700, 300],
                }),
            }),
            memory: Some(MemoryStat {
                cache: 4096,
                rss: 8192,
                usage: Some(MemoryEntry {
                    limit: 1 << 20,
                    usage: 12288,
                    max: 16384,
                    failcnt: 0,
                }),
            }),
        };
        let back = Metrics::decode(m.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back, m);
        let rows = rows(&back);
        assert_eq!(
            rows,
            [
                ("memory.usage_in_bytes", "12288"),
                ("memory.limit_in_bytes", "1048576"),
                ("memory.stat.cache", "4096"),
                ("cpuacct.usage", "1000"),
                ("cpuacct.usage_percpu", "[700, 300]"),
                ("pids.current", "2"),
                ("pids.limit", "64"),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        assert_eq!(to_json(&back)["memory"]["limit"], 1048576);
        assert!(is_v1("io.containerd.cgroups.v1.Metrics"));
        assert!(is_v1(
            "types.containerd.io/io.containerd.cgroups.v1.Metrics"
        ));
        assert!(!is_v1("io.containerd.cgroups.v2.Metrics"));
    }
}
