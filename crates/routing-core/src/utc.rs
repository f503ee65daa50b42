//! Calendar time in UTC from milliseconds since the Unix epoch (no time zones, no I/O).

/// A moment in UTC, to the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcTime {
    /// The year (1970 and later for non-negative input).
    pub year: i64,
    /// 1-12.
    pub month: u32,
    /// 1-31.
    pub day: u32,
    /// 0-23.
    pub hour: u32,
    /// 0-59.
    pub minute: u32,
    /// 0-59.
    pub second: u32,
}

impl UtcTime {
    /// The calendar time of `at_ms` milliseconds since 1970-01-01T00:00:00Z.
    pub fn from_unix_ms(at_ms: u64) -> UtcTime {
        let seconds = at_ms / 1000;
        let (days, rest) = (seconds / 86_400, seconds % 86_400);
        // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        UtcTime {
            year: yoe + era * 400 + i64::from(month <= 2),
            month: month as u32,
            day: day as u32,
            hour: (rest / 3600) as u32,
            minute: (rest / 60 % 60) as u32,
            second: (rest % 60) as u32,
        }
    }

    /// `YYYY-MM-DD HH:MM:SS`.
    pub fn to_plain(&self) -> String {
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }

    /// RFC 3339 in UTC: `YYYY-MM-DDTHH:MM:SSZ`.
    pub fn to_rfc3339(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_moments_have_their_calendar_dates() {
        assert_eq!(
            UtcTime::from_unix_ms(0).to_rfc3339(),
            "1970-01-01T00:00:00Z"
        );
        // 2000-02-29 (a leap day of a century leap year) 12:34:56.789.
        assert_eq!(
            UtcTime::from_unix_ms(951_827_696_789).to_plain(),
            "2000-02-29 12:34:56"
        );
        assert_eq!(
            UtcTime::from_unix_ms(1_798_675_200_000).to_rfc3339(),
            "2026-12-31T00:00:00Z"
        );
        assert_eq!(
            UtcTime::from_unix_ms(4_102_444_799_000).to_rfc3339(),
            "2099-12-31T23:59:59Z"
        );
    }
}
