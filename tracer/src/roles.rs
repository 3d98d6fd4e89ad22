//! What part a process plays: the worker that is traced, or one of Chromium's processes.
//!
//! Chromium says what each child is with `--type=` on its command line, but rewrites its argv,
//! so `/proc/PID/cmdline` may hold the whole command line as one string with spaces: arguments
//! are split on NUL *and* spaces before looking.

/// The arguments of a command line, split on NUL and spaces (Chromium rewrites its argv).
pub fn split_args(cmdline: &[String]) -> Vec<&str> {
    cmdline
        .iter()
        .flat_map(|arg| arg.split([' ', '\0']))
        .filter(|a| !a.is_empty())
        .collect()
}

/// The role of a Chromium process, from its command line and name; None for anything else.
pub fn chromium_role(cmdline: &[String], comm: &str, exe: Option<&str>) -> Option<String> {
    let args = split_args(cmdline);
    let flag = |name: &str| args.iter().find_map(|a| a.strip_prefix(name));
    let basename = |path: &str| path.rsplit('/').next().unwrap_or(path).to_string();
    let program = args.first().map(|a| basename(a)).unwrap_or_default();

    if comm.contains("crashpad") || program.contains("crashpad") {
        return Some("crashpad".into());
    }
    match flag("--type=") {
        Some("renderer") => Some("renderer".into()),
        Some("zygote") => Some("zygote".into()),
        Some("gpu-process") => Some("gpu".into()),
        Some("crashpad-handler") => Some("crashpad".into()),
        Some("utility") => {
            // network.mojom.NetworkService -> network
            let sub = flag("--utility-sub-type=")
                .and_then(|s| s.split('.').next())
                .unwrap_or("unknown");
            Some(format!("utility:{}", sub.to_lowercase()))
        }
        Some(_) => Some("other".into()),
        None => {
            // The program, not comm: Debian's /usr/bin/chromium is a shell script whose comm
            // (and its subshells') reads "chromium" until it execs the real browser.
            let exe = exe.map(basename).unwrap_or_default();
            [program.as_str(), exe.as_str()]
                .iter()
                .any(|name| is_browser_binary(name))
                .then(|| "browser".into())
        }
    }
}

fn is_browser_binary(name: &str) -> bool {
    matches!(
        name,
        "chrome"
            | "chromium"
            | "chromium-browser"
            | "google-chrome"
            | "chrome-headless-shell"
            | "headless_shell"
    )
}

/// The role of a process in the trace: a Chromium role when it is one, `worker` for the traced
/// root and its non-browser descendants, `other` for anything else below a browser.
pub fn role(chromium: Option<String>, is_root: bool, parent_role: Option<&str>) -> String {
    match chromium {
        Some(role) => role,
        None if is_root || matches!(parent_role, None | Some("worker")) => "worker".into(),
        None => "other".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        vec![line.to_string()]
    }

    #[test]
    fn reads_chromium_types_even_from_a_rewritten_one_string_argv() {
        let renderer =
            args("/usr/lib/chromium/chromium --type=renderer --renderer-client-id=7 --lang=en");
        assert_eq!(
            chromium_role(&renderer, "chromium", None).as_deref(),
            Some("renderer")
        );
        let zygote = vec![
            "/usr/lib/chromium/chromium".into(),
            "--type=zygote".into(),
            "--no-zygote-sandbox".into(),
        ];
        assert_eq!(
            chromium_role(&zygote, "chromium", None).as_deref(),
            Some("zygote")
        );
        let gpu = args("/usr/lib/chromium/chromium --type=gpu-process --headless");
        assert_eq!(
            chromium_role(&gpu, "chromium", None).as_deref(),
            Some("gpu")
        );
        let network = args(
            "chromium --type=utility --utility-sub-type=network.mojom.NetworkService --lang=en",
        );
        assert_eq!(
            chromium_role(&network, "chromium", None).as_deref(),
            Some("utility:network")
        );
        let storage = vec![
            "chromium".into(),
            "--type=utility".into(),
            "--utility-sub-type=storage.mojom.StorageService".into(),
        ];
        assert_eq!(
            chromium_role(&storage, "chromium", None).as_deref(),
            Some("utility:storage")
        );
    }

    #[test]
    fn the_browser_is_chromium_without_a_type_and_crashpad_is_its_own() {
        let browser = vec![
            "/usr/lib/chromium/chromium".into(),
            "--headless".into(),
            "--no-sandbox".into(),
        ];
        assert_eq!(
            chromium_role(&browser, "chromium", None).as_deref(),
            Some("browser")
        );
        let crashpad = vec![
            "/usr/lib/chromium/chrome_crashpad_handler".into(),
            "--database=/tmp/x".into(),
        ];
        assert_eq!(
            chromium_role(&crashpad, "chrome_crashpad", None).as_deref(),
            Some("crashpad")
        );
        assert_eq!(
            chromium_role(&args("node worker.js"), "node", Some("/usr/bin/node")),
            None
        );
        // Debian's /usr/bin/chromium wrapper script is the worker's until it execs the browser.
        let wrapper = args("/bin/sh /usr/bin/chromium --headless");
        assert_eq!(
            chromium_role(&wrapper, "chromium", Some("/usr/bin/dash")),
            None
        );
    }

    #[test]
    fn non_chromium_processes_are_the_workers_unless_below_a_browser() {
        assert_eq!(role(None, true, Some("other")), "worker");
        assert_eq!(role(None, false, Some("worker")), "worker");
        assert_eq!(role(None, false, Some("browser")), "other");
        assert_eq!(role(Some("gpu".into()), false, Some("zygote")), "gpu");
    }
}
