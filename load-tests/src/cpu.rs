//! The generator's own CPU time, so that a report says whether the generator could have been the
//! bottleneck: from `/proc/self/stat` on Linux, absent elsewhere.

use std::time::Duration;

/// Clock ticks per second of `/proc` times (`USER_HZ`): 100 on every Linux architecture's ABI.
const USER_HZ: u64 = 100;

/// Returns the CPU time (user + system, every thread) this process has used so far.
pub fn process_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_stat(&stat)
}

/// Returns `utime + stime` of a `/proc/<pid>/stat` line. The command name (field 2) may contain
/// spaces and parentheses, so fields are counted from its last `)`.
fn parse_stat(stat: &str) -> Option<Duration> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace();
    // After the name: state (field 3) ... utime (field 14), stime (field 15).
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = utime.checked_add(stime)?;
    Some(Duration::from_millis(ticks.checked_mul(1000 / USER_HZ)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_user_and_system_ticks() {
        let line = "4242 (greyrouter-load) S 1 4242 4242 0 -1 4194560 1500 0 0 0 \
                    250 130 0 0 20 0 3 0 12345 1000000 500 18446744073709551615";
        assert_eq!(parse_stat(line), Some(Duration::from_millis(3800)));
    }

    #[test]
    fn copes_with_spaces_and_parentheses_in_the_name() {
        let line = "7 (a b) c)) R 1 7 7 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 1 1 1";
        assert_eq!(parse_stat(line), Some(Duration::from_millis(30)));
    }

    #[test]
    fn refuses_a_truncated_line() {
        assert_eq!(parse_stat("1 (x) S 1 2 3"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn this_process_has_used_some_time() {
        if cfg!(target_os = "linux") {
            assert!(process_cpu_time().is_some());
        }
    }
}
