//! Printing task metrics: containerd's `io.containerd.cgroups.v1.Metrics`, the fields ctr
//! prints.

pub use berth_proto::io::containerd::cgroups::v1::Metrics;
use prost::Name;
use serde_json::{json, Value};

/// Whether an `Any` type URL names cgroup v1 metrics (with or without a `host/` prefix).
pub fn is_v1(type_url: &str) -> bool {
    type_url.rsplit('/').next() == Some(Metrics::full_name().as_str())
}

/// The rows ctr's `tasks metrics` prints for cgroup v1, as (metric, value).
pub fn rows(m: &Metrics) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(mem) = &m.memory {
        let usage = mem.usage.unwrap_or_default();
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
        let usage = mem.usage.unwrap_or_default();
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
    use berth_proto::io::containerd::cgroups::v1::{
        CpuStat, CpuUsage, MemoryEntry, MemoryStat, PidsStat,
    };
    use prost::Message;

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
                ..Default::default()
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
                ..Default::default()
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
