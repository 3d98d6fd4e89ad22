//! The layering rule of `tracer/src`, checked on its own sources: each stage imports only from
//! the stages before it (collect → trace → analysis → render; session and the command line
//! drive them), and the leaves (`units`, `diagnostics`) import no stage.

use std::path::Path;

/// A stage's place in the pipeline; a module may import from its own and lower places only.
fn rank(stage: &str) -> Option<u32> {
    Some(match stage {
        "units" | "diagnostics" => 0,
        "collect" => 1,
        "trace" => 2,
        "analysis" => 3,
        "render" => 4,
        "session" => 5,
        "cli" | "doctor" => 6,
        _ => return None,
    })
}

/// The first segment of every `crate::` path in `source`, with `use crate::{a, b::c}` groups
/// expanded to their top-level items (comments left out).
fn crate_imports(source: &str) -> Vec<String> {
    let code: Vec<&str> = source
        .lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect();
    let code = code.join("\n");
    let first_segment = |path: &str| {
        let path = path.trim_start();
        let end = path
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(path.len());
        path[..end].to_string()
    };
    let mut stages = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        let Some(group) = rest.strip_prefix('{') else {
            stages.push(first_segment(rest));
            continue;
        };
        // The group's items split at its own commas, up to its closing brace.
        let (mut depth, mut start) = (0, 0);
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth > 0 => depth -= 1,
                '}' | ',' if depth == 0 => {
                    stages.push(first_segment(&group[start..i]));
                    start = i + 1;
                    if c == '}' {
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    stages.retain(|stage| !stage.is_empty());
    stages
}

/// Every `(file, stage it imports)` that runs back up the pipeline.
fn imports_back_up(src: &Path) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("the sources") {
            let path = entry.expect("a source").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let relative = path.strip_prefix(src).expect("under src");
            let stage = relative
                .components()
                .next()
                .and_then(|c| c.as_os_str().to_str())
                .map(|s| s.trim_end_matches(".rs"))
                .unwrap_or_default();
            let Some(own) = rank(stage) else { continue };
            let source = std::fs::read_to_string(&path).expect("a readable source");
            for imported in crate_imports(&source) {
                if rank(&imported).is_some_and(|r| r > own) {
                    found.push((relative.display().to_string(), imported));
                }
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stage_imports_only_from_the_stages_before_it() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        assert_eq!(imports_back_up(&src), Vec::<(String, String)>::new());
    }

    #[test]
    fn an_import_back_up_is_found_in_either_form() {
        let source = "use crate::{\n    collect::roles::Role,\n    render::{progress, metrics::X},\n};\n\
                      fn f() { crate::analysis::analyze(); } // crate::session is a comment";
        assert_eq!(crate_imports(source), ["collect", "render", "analysis"]);
        let dir = std::env::temp_dir().join(format!("leaktrace-layers-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("trace")).unwrap();
        std::fs::write(dir.join("trace/x.rs"), source).unwrap();
        let found = imports_back_up(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            found,
            [
                ("trace/x.rs".to_string(), "analysis".to_string()),
                ("trace/x.rs".to_string(), "render".to_string())
            ]
        );
    }
}
