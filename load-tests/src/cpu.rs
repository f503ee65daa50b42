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

    /// A busy loop is counted, at the right scale: spinning until the measure has grown by
    /// 200 ms takes a bounded wall time (a measure that stays still, or reads the wrong fields,
    /// never gets there), and no more CPU time than the wall time on every core passes (a
    /// measure ten times too large gets there too soon). Other tests' threads only add CPU time,
    /// and a busy machine only adds wall time.
    #[test]
    #[cfg(target_os = "linux")]
    fn a_busy_loop_is_counted_within_the_wall_time_on_every_core() {
        const SPIN: Duration = Duration::from_millis(200);
        const GIVE_UP: Duration = Duration::from_secs(20);
        // The kernel counts whole ticks, per thread: allow a few of them.
        const TICKS: Duration = Duration::from_millis(5 * 1000 / USER_HZ);
        let start = process_cpu_time().expect("/proc/self/stat on Linux");
        let wall = std::time::Instant::now();
        let mut spun = Duration::ZERO;
        let mut x = 1u64;
        while spun < SPIN {
            assert!(
                wall.elapsed() < GIVE_UP,
                "{spun:?} of CPU time counted after {GIVE_UP:?} of spinning"
            );
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005) ^ (x >> 7));
            }
            spun = process_cpu_time().expect("still readable") - start;
        }
        let elapsed = wall.elapsed();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        assert!(
            spun <= elapsed * cores + TICKS,
            "{spun:?} of CPU time in {elapsed:?} of wall time on {cores} cores"
        );
    }
}
