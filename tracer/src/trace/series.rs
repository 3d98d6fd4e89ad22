//! What a fitted series measures. In JSON (and in the reports) a series is its name:
//! `tree.owned`, `role.renderer.owned`, `worker.heapUsed`, `site.https://x.example.js_heap_used`.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::collect::roles::Role;

#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Series {
    /// The PSS the whole tree owns (anonymous and shared memory): what growth is judged on.
    #[default]
    TreeOwned,
    /// The tree's whole PSS, and its shared-memory and file-backed parts.
    TreePss,
    TreeShmem,
    TreeFile,
    /// The PSS the processes of one role own.
    RoleOwned(Role),
    /// Browser instances (browser processes) alive, and processes alive.
    Browsers,
    Processes,
    /// One of the worker's own figures, by its key.
    Worker(String),
    /// The browser's pages, contexts and the pages' JS heap (DevTools).
    Pages,
    Contexts,
    JsHeap,
    /// The JS heap of the pages of one site (origin).
    SiteJsHeap(String),
    /// A series this leaktrace does not know (from a trace written by a later version).
    Other(String),
}

impl Series {
    /// The whole tree's own series: what grows, not where it grows.
    pub fn is_whole_tree(&self) -> bool {
        matches!(self, Series::TreeOwned | Series::TreePss)
    }

    /// A count (pages, contexts, browsers, processes), not bytes.
    pub fn is_count(&self) -> bool {
        matches!(
            self,
            Series::Pages | Series::Contexts | Series::Browsers | Series::Processes
        )
    }

    pub fn worker(key: &str) -> Series {
        Series::Worker(key.to_string())
    }
}

impl fmt::Display for Series {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Series::TreeOwned => "tree.owned".into(),
            Series::TreePss => "tree.pss".into(),
            Series::TreeShmem => "tree.shmem".into(),
            Series::TreeFile => "tree.file".into(),
            Series::RoleOwned(role) => format!("role.{role}.owned"),
            Series::Browsers => "processes.browsers".into(),
            Series::Processes => "processes.count".into(),
            Series::Worker(key) => format!("worker.{key}"),
            Series::Pages => "browser.pages".into(),
            Series::Contexts => "browser.contexts".into(),
            Series::JsHeap => "browser.js_heap_used".into(),
            Series::SiteJsHeap(site) => format!("site.{site}.js_heap_used"),
            Series::Other(name) => name.clone(),
        };
        f.pad(&name)
    }
}

impl FromStr for Series {
    type Err = std::convert::Infallible;
    fn from_str(name: &str) -> Result<Series, Self::Err> {
        Ok(match name {
            "tree.owned" => Series::TreeOwned,
            "tree.pss" => Series::TreePss,
            "tree.shmem" => Series::TreeShmem,
            "tree.file" => Series::TreeFile,
            "processes.browsers" => Series::Browsers,
            "processes.count" => Series::Processes,
            "browser.pages" => Series::Pages,
            "browser.contexts" => Series::Contexts,
            "browser.js_heap_used" => Series::JsHeap,
            other => {
                if let Some(role) = other
                    .strip_prefix("role.")
                    .and_then(|r| r.strip_suffix(".owned"))
                {
                    Series::RoleOwned(role.parse().unwrap_or_default())
                } else if let Some(key) = other.strip_prefix("worker.") {
                    Series::worker(key)
                } else if let Some(site) = other
                    .strip_prefix("site.")
                    .and_then(|s| s.strip_suffix(".js_heap_used"))
                {
                    Series::SiteJsHeap(site.to_string())
                } else {
                    Series::Other(other.to_string())
                }
            }
        })
    }
}

impl PartialEq<&str> for Series {
    #[expect(
        clippy::cmp_owned,
        reason = "a series' name is built by Display; comparing with a name is for tests and lookups by name"
    )]
    fn eq(&self, other: &&str) -> bool {
        *self == Series::from(*other)
    }
}

impl Serialize for Series {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Series {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Series, D::Error> {
        let name = String::deserialize(deserializer)?;
        Ok(Series::from(name.as_str()))
    }
}

impl From<&str> for Series {
    fn from(name: &str) -> Series {
        let Ok(series) = name.parse();
        series
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_reads_back_from_its_name() {
        for series in [
            Series::TreeOwned,
            Series::TreePss,
            Series::TreeShmem,
            Series::TreeFile,
            Series::RoleOwned(Role::Utility("utility:network".into())),
            Series::RoleOwned(Role::Renderer),
            Series::Browsers,
            Series::Processes,
            Series::worker("inspect.heapUsed"),
            Series::Pages,
            Series::Contexts,
            Series::JsHeap,
            Series::SiteJsHeap("https://shop.example:8443".into()),
        ] {
            let name = series.to_string();
            assert_eq!(name.parse::<Series>().unwrap(), series, "{name}");
            let json = serde_json::to_string(&series).unwrap();
            assert_eq!(serde_json::from_str::<Series>(&json).unwrap(), series);
        }
        assert_eq!(Series::RoleOwned(Role::Worker), "role.worker.owned");
        assert_eq!(Series::from("nonsense"), Series::Other("nonsense".into()));
    }
}
