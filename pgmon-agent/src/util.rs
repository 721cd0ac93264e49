//! Small helpers every room uses, kept at the bottom of the module graph: the clock, error
//! chains, RFC 3339 timestamps and byte sizes for people.

/// Milliseconds since the UNIX epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// "a: b: c" from an error and its sources.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        s.push_str(": ");
        s.push_str(&src.to_string());
        cur = src.source();
    }
    s
}

/// `ms` since the UNIX epoch as RFC 3339 UTC with milliseconds (`2024-05-01T12:00:00.000Z`;
/// `humantime`).
pub fn rfc3339(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// `b` bytes in the largest binary unit that keeps it ≥ 1: `512 B`, `12.0 MiB`.
pub fn bytes(b: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b;
    let mut i = 0;
    while v.abs() >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

/// (resident bytes, CPU seconds) of this process, from /proc/self/stat (proc(5)).
pub fn process_usage() -> Option<(u64, f64)> {
    let me = procfs::process::Process::myself().ok()?;
    let stat = me.stat().ok()?;
    let ticks = procfs::ticks_per_second() as f64;
    let page = procfs::page_size();
    Some((stat.rss * page, (stat.utime + stat.stime) as f64 / ticks))
}

/// Makes ring the process's rustls crypto provider, once; every TLS user (the webhook
/// client, the HTTPS listener, SMTP) calls it first. Without it rustls picks a provider from
/// its crate features and panics when a build enables two (ring and aws-lc-rs).
pub fn tls_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err: another provider was installed first, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(
            super::rfc3339(1_714_564_800_000),
            "2024-05-01T12:00:00.000Z"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(super::bytes(512.0), "512 B");
        assert_eq!(super::bytes(12.0 * 1024.0 * 1024.0), "12.0 MiB");
    }
}
