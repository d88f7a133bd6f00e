//! The process's cgroup: its CPU limit and throttling, its memory limit and
//! use (cgroup v2 and v1, found through `/proc/self/cgroup` and
//! `/proc/self/mountinfo`), and the machine's steal time (`/proc/stat`).
//! Linux only; nothing elsewhere.

use std::path::{Path, PathBuf};

/// How often the process's cgroup is looked up again, with its limits: the
/// process may be moved, a limit changed (the counters are read at each
/// look).
pub const DISCOVER_EVERY_NS: u64 = 10_000_000_000;

/// CPU throttling counters of a cgroup, cumulative.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuStat {
    /// Enforcement periods that elapsed with the cgroup runnable.
    pub periods: u64,
    /// Periods in which the cgroup used up its quota.
    pub throttled_periods: u64,
    /// Time its threads were held back, in ns.
    pub throttled_ns: u64,
}

/// What is read about the process's cgroup at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CgroupStats {
    /// The CPU limit in cores (quota / period), where one is set.
    pub cpu_limit_cores: Option<f64>,
    /// Throttling of the cgroup that carries the limit (or of the
    /// process's own cgroup without one).
    pub cpu: Option<CpuStat>,
    /// The memory limit in bytes, where one is set.
    pub memory_limit_bytes: Option<u64>,
    /// Memory in use that cannot be dropped on demand: use minus inactive
    /// file pages (what the OOM killer and the kubelet go by).
    pub memory_working_set_bytes: Option<u64>,
}

/// The directories of the process's cgroup for the CPU and memory
/// controllers, the cgroup version of each, and the limits set on them as
/// read when it was discovered (limits change rarely; the counters are read
/// at each look).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cgroup {
    /// The CPU controller's directories, the process's own first, then its
    /// ancestors up to the mount's root (a limit may be set on any).
    cpu: Vec<PathBuf>,
    cpu_v2: bool,
    memory: Vec<PathBuf>,
    memory_v2: bool,
    /// The tightest CPU limit in cores, and the index in `cpu` of the
    /// directory that sets it.
    cpu_limit: Option<(f64, usize)>,
    /// The tightest memory limit in bytes.
    memory_limit: Option<u64>,
}

/// A mount of a cgroup hierarchy: (root within the hierarchy, mount point,
/// v2, the controllers of a v1 mount).
type Mount = (String, PathBuf, bool, Vec<String>);

fn mounts(mountinfo: &str) -> Vec<Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS
            let (before, after) = line.split_once(" - ")?;
            let fields: Vec<&str> = before.split(' ').collect();
            let root = unescape(fields.get(3)?);
            let point = PathBuf::from(unescape(fields.get(4)?));
            let mut after = after.split(' ');
            let fstype = after.next()?;
            let _source = after.next();
            let options: Vec<String> = after
                .next()
                .unwrap_or("")
                .split(',')
                .map(str::to_owned)
                .collect();
            match fstype {
                "cgroup2" => Some((root, point, true, Vec::new())),
                "cgroup" => Some((root, point, false, options)),
                _ => None,
            }
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if let Some(v) = digits
                .iter()
                .all(|d| (b'0'..=b'7').contains(d))
                .then(|| digits.iter().fold(0u32, |a, d| a * 8 + u32::from(d - b'0')))
                .and_then(|v| u8::try_from(v).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The directory of cgroup `path` under a mount whose root is `root`, and
/// its ancestors within the mount.
fn dirs(root: &str, point: &Path, path: &str) -> Vec<PathBuf> {
    // A path outside the mount's root: a cgroup namespace shows the
    // process at its root already.
    let rel = if root == "/" {
        path
    } else {
        path.strip_prefix(root)
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))
            .unwrap_or("/")
    };
    let mut dir = point.to_path_buf();
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        dir.push(part);
    }
    let mut out = vec![dir.clone()];
    while dir != point {
        if !dir.pop() {
            break;
        }
        out.push(dir.clone());
    }
    out
}

impl Cgroup {
    /// Finds the process's cgroup from the text of `/proc/self/cgroup` and
    /// `/proc/self/mountinfo`.
    pub fn parse(cgroup: &str, mountinfo: &str) -> Cgroup {
        let mounts = mounts(mountinfo);
        let mut found = Cgroup::default();
        let mut v2_path = None;
        for line in cgroup.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(id), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if id == "0" && controllers.is_empty() {
                v2_path = Some(path.to_owned());
                continue;
            }
            let controllers: Vec<&str> = controllers.split(',').collect();
            for (want, slot) in [("cpu", 0), ("memory", 1)] {
                if !controllers.contains(&want) {
                    continue;
                }
                let Some((root, point, _, _)) = mounts
                    .iter()
                    .find(|(_, _, v2, opts)| !v2 && opts.iter().any(|o| o == want))
                else {
                    continue;
                };
                let d = dirs(root, point, path);
                if slot == 0 {
                    found.cpu = d;
                } else {
                    found.memory = d;
                }
            }
        }
        // cgroup v2 where v1 does not hold the controller (a hybrid setup
        // keeps v1 for some).
        if let (Some(path), Some((root, point, _, _))) =
            (v2_path, mounts.iter().find(|(_, _, v2, _)| *v2))
        {
            let d = dirs(root, point, &path);
            let controllers =
                std::fs::read_to_string(point.join("cgroup.controllers")).unwrap_or_default();
            let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
            if found.cpu.is_empty() && has("cpu") {
                found.cpu = d.clone();
                found.cpu_v2 = true;
            }
            if found.memory.is_empty() && has("memory") {
                found.memory = d;
                found.memory_v2 = true;
            }
        }
        found
    }

    /// The process's cgroup now (empty off Linux, or without cgroups).
    pub fn discover() -> Cgroup {
        let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut found = Cgroup::parse(&cgroup, &mountinfo);
        found.read_limits();
        found
    }

    /// Reads the limits set on the cgroup and its ancestors: the tightest
    /// of each.
    fn read_limits(&mut self) {
        self.cpu_limit = self
            .cpu
            .iter()
            .enumerate()
            .filter_map(|(i, d)| self.read_cpu_limit(d).map(|l| (l, i)))
            .min_by(|a, b| a.0.total_cmp(&b.0));
        let name = if self.memory_v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        self.memory_limit = self
            .memory
            .iter()
            .filter_map(|d| {
                let v: u64 = read_number(&d.join(name))?;
                // v1 says "no limit" with a huge number near i64::MAX.
                (v < 1 << 62).then_some(v)
            })
            .min();
    }

    /// The CPU limit in cores set on `dir`, if any.
    fn read_cpu_limit(&self, dir: &Path) -> Option<f64> {
        let (quota, period) = if self.cpu_v2 {
            let text = std::fs::read_to_string(dir.join("cpu.max")).ok()?;
            let mut it = text.split_whitespace();
            let quota = it.next()?;
            let period: f64 = it.next()?.parse().ok()?;
            if quota == "max" {
                return None;
            }
            (quota.parse::<f64>().ok()?, period)
        } else {
            let quota: f64 = read_number(&dir.join("cpu.cfs_quota_us"))?;
            let period: f64 = read_number(&dir.join("cpu.cfs_period_us"))?;
            (quota, period)
        };
        (quota > 0.0 && period > 0.0).then(|| quota / period)
    }

    /// The throttling counters of `dir`.
    fn cpu_stat(&self, dir: &Path) -> Option<CpuStat> {
        let text = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
        parse_cpu_stat(&text, self.cpu_v2)
    }

    /// The CPU limit (the tightest on the way up) and the throttling of
    /// the cgroup that sets it; the process's own cgroup's without a limit.
    pub fn cpu(&self) -> (Option<f64>, Option<CpuStat>) {
        match self.cpu_limit {
            Some((limit, i)) => (Some(limit), self.cpu.get(i).and_then(|d| self.cpu_stat(d))),
            None => (None, self.cpu.first().and_then(|d| self.cpu_stat(d))),
        }
    }

    /// The throttling counters of the cgroup [`cpu`](Self::cpu) reads.
    pub fn throttling(&self) -> Option<CpuStat> {
        self.cpu().1
    }

    /// The memory limit (the tightest on the way up) and the working set of
    /// the process's own cgroup.
    pub fn memory(&self) -> (Option<u64>, Option<u64>) {
        let limit = self.memory_limit;
        let own = self.memory.first();
        let working_set = own.and_then(|d| {
            let (usage, inactive) = if self.memory_v2 {
                ("memory.current", "inactive_file")
            } else {
                ("memory.usage_in_bytes", "total_inactive_file")
            };
            let usage: u64 = read_number(&d.join(usage))?;
            let stat = std::fs::read_to_string(d.join("memory.stat")).unwrap_or_default();
            let inactive = stat
                .lines()
                .find_map(|l| l.strip_prefix(inactive)?.trim().parse::<u64>().ok())
                .unwrap_or(0);
            Some(usage.saturating_sub(inactive))
        });
        (limit, working_set)
    }

    /// Everything at once.
    pub fn stats(&self) -> CgroupStats {
        let (cpu_limit_cores, cpu) = self.cpu();
        let (memory_limit_bytes, memory_working_set_bytes) = self.memory();
        CgroupStats {
            cpu_limit_cores,
            cpu,
            memory_limit_bytes,
            memory_working_set_bytes,
        }
    }
}

fn read_number<T: std::str::FromStr>(path: &Path) -> Option<T> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Parses `cpu.stat`: v2 gives `throttled_usec`, v1 `throttled_time` (ns).
pub fn parse_cpu_stat(text: &str, v2: bool) -> Option<CpuStat> {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse::<u64>().ok()).flatten()
        })
    };
    let throttled_ns = if v2 {
        field("throttled_usec")?.saturating_mul(1000)
    } else {
        field("throttled_time")?
    };
    Some(CpuStat {
        periods: field("nr_periods")?,
        throttled_periods: field("nr_throttled")?,
        throttled_ns,
    })
}

/// The machine's steal time so far, in ns (all CPUs together): time the
/// hypervisor ran something else while a virtual CPU had work.
pub fn steal_ns() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        use std::sync::OnceLock;
        static TICK_NS: OnceLock<u64> = OnceLock::new();
        let tick_ns = *TICK_NS.get_or_init(|| {
            // SAFETY: sysconf has no preconditions.
            let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
            if hz > 0 {
                1_000_000_000 / hz as u64
            } else {
                10_000_000
            }
        });
        let text = std::fs::read_to_string("/proc/stat").ok()?;
        let line = text.lines().next()?.strip_prefix("cpu ")?;
        // user nice system idle iowait irq softirq steal ...
        let steal: u64 = line.split_whitespace().nth(7)?.parse().ok()?;
        Some(steal.saturating_mul(tick_ns))
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS_V1: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_v1_controllers_and_their_ancestors() {
        let cg = Cgroup::parse(
            "4:memory:/kubepods/pod1/c1\n2:cpu,cpuacct:/kubepods/pod1/c1\n0::/\n",
            MOUNTS_V1,
        );
        assert!(!cg.cpu_v2 && !cg.memory_v2);
        assert_eq!(
            cg.cpu,
            vec![
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/kubepods/pod1/c1"),
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/kubepods/pod1"),
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/kubepods"),
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"),
            ]
        );
        assert_eq!(
            cg.memory[0],
            PathBuf::from("/sys/fs/cgroup/memory/kubepods/pod1/c1")
        );
    }

    #[test]
    fn a_mount_of_a_subtree_is_followed_from_its_root() {
        // A container that sees its own cgroup mounted at /sys/fs/cgroup/cpu.
        let mounts = "50 40 0:29 /docker/abc /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        let cg = Cgroup::parse("2:cpu:/docker/abc\n", mounts);
        assert_eq!(cg.cpu, vec![PathBuf::from("/sys/fs/cgroup/cpu")]);
        let cg = Cgroup::parse("2:cpu:/docker/abc/inner\n", mounts);
        assert_eq!(
            cg.cpu,
            vec![
                PathBuf::from("/sys/fs/cgroup/cpu/inner"),
                PathBuf::from("/sys/fs/cgroup/cpu")
            ]
        );
    }

    #[test]
    fn mount_points_with_escaped_spaces_are_read() {
        assert_eq!(unescape(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/trailing\"), r"/trailing\");
    }

    #[test]
    fn no_cgroup_gives_nothing() {
        let cg = Cgroup::parse("", "");
        assert_eq!(cg, Cgroup::default());
        assert_eq!(cg.stats(), CgroupStats::default());
    }

    #[test]
    fn cpu_stat_of_both_versions() {
        let v1 = "nr_periods 39\nnr_throttled 32\nthrottled_time 2800000000\n";
        assert_eq!(
            parse_cpu_stat(v1, false),
            Some(CpuStat {
                periods: 39,
                throttled_periods: 32,
                throttled_ns: 2_800_000_000
            })
        );
        let v2 = "usage_usec 1\nuser_usec 1\nsystem_usec 0\nnr_periods 10\nnr_throttled 4\nthrottled_usec 1500\n";
        assert_eq!(
            parse_cpu_stat(v2, true),
            Some(CpuStat {
                periods: 10,
                throttled_periods: 4,
                throttled_ns: 1_500_000
            })
        );
        // cgroup v2 without the cpu controller's bandwidth fields.
        assert_eq!(parse_cpu_stat("usage_usec 5\n", true), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn steal_time_is_read() {
        assert!(steal_ns().is_some());
    }
}
