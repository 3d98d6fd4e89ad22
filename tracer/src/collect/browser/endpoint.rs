//! Where the browser's DevTools endpoint is: `--cdp auto|off|URL`, and what a browser's own
//! command line says (`--remote-debugging-port`, DevToolsActivePort, `--remote-debugging-pipe`).

use std::path::Path;

/// Where to find the DevTools endpoint (`--cdp`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CdpMode {
    /// From the traced browser's command line.
    Auto,
    Off,
    /// A given `ws://` or `http://host:port` endpoint.
    Url(String),
}

impl std::str::FromStr for CdpMode {
    type Err = String;
    fn from_str(text: &str) -> Result<CdpMode, String> {
        match text {
            "auto" => Ok(CdpMode::Auto),
            "off" => Ok(CdpMode::Off),
            url if url.starts_with("ws://") || url.starts_with("http://") => {
                Ok(CdpMode::Url(url.to_string()))
            }
            other => Err(format!(
                "{other:?}: expected auto, off, or a ws:// or http:// URL"
            )),
        }
    }
}

/// What a browser's command line says about its DevTools endpoint.
#[derive(Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A websocket URL, or an http://host:port to ask for one.
    Url(String),
    /// `--remote-debugging-pipe`: no port to attach to.
    Pipe,
    /// Remote debugging is on but the port is not known yet (DevToolsActivePort not written).
    NotYet,
    /// Remote debugging is off.
    None,
}

/// Finds the endpoint on a browser's command line: `--remote-debugging-port=N`, with N=0 (or
/// any N) resolved through `<user-data-dir>/DevToolsActivePort` (line 1 the port, line 2 the
/// path), as puppeteer's default launch needs.
pub fn endpoint_of(cmdline: &[String], home: Option<&Path>) -> Endpoint {
    let args = crate::collect::roles::split_args(cmdline);
    let flag = |prefix: &str| args.iter().find_map(|a| a.strip_prefix(prefix));
    if args.contains(&"--remote-debugging-pipe") && flag("--remote-debugging-port=").is_none() {
        return Endpoint::Pipe;
    }
    let Some(port) = flag("--remote-debugging-port=").and_then(|p| p.parse::<u16>().ok()) else {
        return Endpoint::None;
    };
    let profile = flag("--user-data-dir=")
        .map(Path::new)
        .map(Path::to_path_buf)
        .or_else(|| home.map(|h| h.join(".config/chromium")));
    if let Some(active) =
        profile.and_then(|dir| std::fs::read_to_string(dir.join("DevToolsActivePort")).ok())
    {
        let mut lines = active.lines();
        if let (Some(port), Some(path)) = (lines.next(), lines.next())
            && port.trim().parse::<u16>().is_ok()
        {
            return Endpoint::Url(format!("ws://127.0.0.1:{}{}", port.trim(), path.trim()));
        }
    }
    if port > 0 {
        Endpoint::Url(format!("http://127.0.0.1:{port}"))
    } else {
        Endpoint::NotYet
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_endpoint_puppeteer_and_playwright_leave_on_the_command_line() {
        let dir = std::env::temp_dir().join(format!("leaktrace-devtools-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("DevToolsActivePort"),
            "40123\n/devtools/browser/abc\n",
        )
        .unwrap();
        let puppeteer = vec![format!(
            "/usr/lib/chromium/chromium --remote-debugging-port=0 --user-data-dir={}",
            dir.display()
        )];
        assert_eq!(
            endpoint_of(&puppeteer, None),
            Endpoint::Url("ws://127.0.0.1:40123/devtools/browser/abc".into())
        );
        let fixed = vec!["chromium".into(), "--remote-debugging-port=9222".into()];
        assert_eq!(
            endpoint_of(&fixed, None),
            Endpoint::Url("http://127.0.0.1:9222".into())
        );
        let playwright = vec!["chromium --remote-debugging-pipe --no-startup-window".to_string()];
        assert_eq!(endpoint_of(&playwright, None), Endpoint::Pipe);
        let fresh = vec![
            "chromium".into(),
            "--remote-debugging-port=0".into(),
            "--user-data-dir=/nonexistent".into(),
        ];
        assert_eq!(endpoint_of(&fresh, None), Endpoint::NotYet);
        assert_eq!(endpoint_of(&["chromium".to_string()], None), Endpoint::None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
