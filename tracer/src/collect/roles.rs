//! What part a process plays: the worker that is traced, or one of Chromium's processes.
//!
//! Chromium says what each child is with `--type=` on its command line, but rewrites its argv,
//! so `/proc/PID/cmdline` may hold the whole command line as one string with spaces: arguments
//! are split on NUL *and* spaces before looking.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A process's role; in JSON (and as a key of `by_role` maps) its name: `worker`, `browser`,
/// `zygote`, `renderer`, `gpu`, `utility:<sub-type>`, `crashpad`, `other`.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// The traced root and its non-browser descendants.
    Worker,
    /// Chromium without `--type=`: the browser process, one per browser instance.
    Browser,
    Zygote,
    Renderer,
    Gpu,
    /// A utility process, by its whole name (`utility:network`, `utility:storage`, ...).
    Utility(String),
    Crashpad,
    /// Anything else below a browser (or a Chromium type leaktrace does not know).
    #[default]
    Other,
}

impl Role {
    pub fn as_str(&self) -> &str {
        match self {
            Role::Worker => "worker",
            Role::Browser => "browser",
            Role::Zygote => "zygote",
            Role::Renderer => "renderer",
            Role::Gpu => "gpu",
            Role::Utility(name) => name,
            Role::Crashpad => "crashpad",
            Role::Other => "other",
        }
    }

    /// Whether a later look at /proc may tell more: a fork of the worker may exec Chromium, and
    /// the zygote's children become renderers and utilities without an exec.
    pub fn may_change(&self) -> bool {
        matches!(self, Role::Worker | Role::Other | Role::Zygote)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for Role {
    type Err = std::convert::Infallible;
    /// Any name reads: one this leaktrace does not know is `other`.
    fn from_str(name: &str) -> Result<Role, Self::Err> {
        Ok(match name {
            "worker" => Role::Worker,
            "browser" => Role::Browser,
            "zygote" => Role::Zygote,
            "renderer" => Role::Renderer,
            "gpu" => Role::Gpu,
            "crashpad" => Role::Crashpad,
            utility if utility.starts_with("utility:") => Role::Utility(utility.to_string()),
            _ => Role::Other,
        })
    }
}

impl PartialEq<&str> for Role {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Serialize for Role {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Role {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Role, D::Error> {
        let name = String::deserialize(deserializer)?;
        Ok(name.parse().unwrap_or(Role::Other))
    }
}

/// The arguments of a command line, split on NUL and spaces (Chromium rewrites its argv).
pub fn split_args(cmdline: &[String]) -> Vec<&str> {
    cmdline
        .iter()
        .flat_map(|arg| arg.split([' ', '\0']))
        .filter(|a| !a.is_empty())
        .collect()
}

/// The role of a Chromium process, from its command line and name; None for anything else.
pub fn chromium_role(cmdline: &[String], comm: &str, exe: Option<&str>) -> Option<Role> {
    let args = split_args(cmdline);
    let flag = |name: &str| args.iter().find_map(|a| a.strip_prefix(name));
    let basename = |path: &str| path.rsplit('/').next().unwrap_or(path).to_string();
    let program = args.first().map(|a| basename(a)).unwrap_or_default();

    if comm.contains("crashpad") || program.contains("crashpad") {
        return Some(Role::Crashpad);
    }
    match flag("--type=") {
        Some("renderer") => Some(Role::Renderer),
        Some("zygote") => Some(Role::Zygote),
        Some("gpu-process") => Some(Role::Gpu),
        Some("crashpad-handler") => Some(Role::Crashpad),
        Some("utility") => {
            // network.mojom.NetworkService -> network
            let sub = flag("--utility-sub-type=")
                .and_then(|s| s.split('.').next())
                .unwrap_or("unknown");
            Some(Role::Utility(format!("utility:{}", sub.to_lowercase())))
        }
        Some(_) => Some(Role::Other),
        None => {
            // The program, not comm: Debian's /usr/bin/chromium is a shell script whose comm
            // (and its subshells') reads "chromium" until it execs the real browser.
            let exe = exe.map(basename).unwrap_or_default();
            [program.as_str(), exe.as_str()]
                .iter()
                .any(|name| is_browser_binary(name))
                .then_some(Role::Browser)
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
/// root and its non-browser descendants, `other` for anything else below a browser. A browser's
/// child that looks like a browser is a fork that has not exec'd (Chromium double-forks to
/// start its crash handler): `other`, or browsers would be counted twice.
pub fn role(chromium: Option<Role>, is_root: bool, parent_role: Option<&Role>) -> Role {
    match chromium {
        Some(Role::Browser) if parent_role == Some(&Role::Browser) => Role::Other,
        Some(role) => role,
        None if is_root || matches!(parent_role, None | Some(Role::Worker)) => Role::Worker,
        None => Role::Other,
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
            chromium_role(&renderer, "chromium", None)
                .as_ref()
                .map(Role::as_str),
            Some("renderer")
        );
        let zygote = vec![
            "/usr/lib/chromium/chromium".into(),
            "--type=zygote".into(),
            "--no-zygote-sandbox".into(),
        ];
        assert_eq!(
            chromium_role(&zygote, "chromium", None)
                .as_ref()
                .map(Role::as_str),
            Some("zygote")
        );
        let gpu = args("/usr/lib/chromium/chromium --type=gpu-process --headless");
        assert_eq!(
            chromium_role(&gpu, "chromium", None)
                .as_ref()
                .map(Role::as_str),
            Some("gpu")
        );
        let network = args(
            "chromium --type=utility --utility-sub-type=network.mojom.NetworkService --lang=en",
        );
        assert_eq!(
            chromium_role(&network, "chromium", None)
                .as_ref()
                .map(Role::as_str),
            Some("utility:network")
        );
        let storage = vec![
            "chromium".into(),
            "--type=utility".into(),
            "--utility-sub-type=storage.mojom.StorageService".into(),
        ];
        assert_eq!(
            chromium_role(&storage, "chromium", None)
                .as_ref()
                .map(Role::as_str),
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
            chromium_role(&browser, "chromium", None)
                .as_ref()
                .map(Role::as_str),
            Some("browser")
        );
        let crashpad = vec![
            "/usr/lib/chromium/chrome_crashpad_handler".into(),
            "--database=/tmp/x".into(),
        ];
        assert_eq!(
            chromium_role(&crashpad, "chrome_crashpad", None)
                .as_ref()
                .map(Role::as_str),
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
        assert_eq!(role(None, true, Some(&Role::Other)), Role::Worker);
        assert_eq!(role(None, false, Some(&Role::Worker)), Role::Worker);
        assert_eq!(role(None, false, Some(&Role::Browser)), Role::Other);
        assert_eq!(role(Some(Role::Gpu), false, Some(&Role::Zygote)), Role::Gpu);
        assert_eq!(
            role(Some(Role::Browser), false, Some(&Role::Worker)),
            Role::Browser
        );
        assert_eq!(
            role(Some(Role::Browser), false, Some(&Role::Browser)),
            Role::Other,
            "a browser's fork that has not exec'd is not another browser"
        );
        let network: Role = "utility:network".parse().unwrap();
        assert_eq!(network, Role::Utility("utility:network".into()));
        assert_eq!(
            serde_json::to_string(&network).unwrap(),
            "\"utility:network\""
        );
        assert_eq!("something-new".parse::<Role>().unwrap(), Role::Other);
        assert_eq!(format!("{:<8}|", Role::Gpu), "gpu     |");
    }
}
