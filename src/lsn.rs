//! PostgreSQL log sequence numbers as text (`1/8566D978`) and back: the one
//! place capture, the projector, status and the tools read and write them.

/// `hi/lo` in hex, as PostgreSQL prints a `pg_lsn`.
pub fn parse(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

pub fn format(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text_round_trips() {
        assert_eq!(parse("1/8566D978"), Some(0x1_8566_D978));
        assert_eq!(format(0x1_8566_D978), "1/8566D978");
        assert_eq!(parse("nonsense"), None);
    }
}
