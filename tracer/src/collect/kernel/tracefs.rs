//! tracefs: where it is mounted, and the field offsets of tracepoint records.
//!
//! Classic tracepoint programs read their record at byte offsets the kernel publishes in
//! `events/<category>/<event>/format`; they are read here, never hard-coded.

use std::path::{Path, PathBuf};

use thiserror::Error;

const MOUNT_POINTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

#[derive(Debug, Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted and could not be mounted ({0}); run `mount -t tracefs nodev /sys/kernel/tracing`"
    )]
    NotMounted(std::io::Error),
    #[error("cannot read the format of tracepoint {event}")]
    Format {
        event: String,
        #[source]
        source: std::io::Error,
    },
    #[error("tracepoint {event} has no field {field}")]
    NoField { event: String, field: String },
}

/// The tracefs mount, mounting it at /sys/kernel/tracing when it is not there.
pub fn mount_point() -> Result<PathBuf, TracefsError> {
    if let Some(found) = MOUNT_POINTS
        .iter()
        .map(Path::new)
        .find(|p| p.join("events").is_dir())
    {
        return Ok(found.to_path_buf());
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: plain mount(2) with NUL-terminated constant strings.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(TracefsError::NotMounted(std::io::Error::last_os_error()));
    }
    Ok(PathBuf::from(MOUNT_POINTS[0]))
}

/// Whether `category:event` exists.
pub fn has_event(tracefs: &Path, category: &str, event: &str) -> bool {
    tracefs.join("events").join(category).join(event).is_dir()
}

/// Byte offset of `field` in the record of tracepoint `category:event`.
pub fn field_offset(
    tracefs: &Path,
    category: &str,
    event: &str,
    field: &str,
) -> Result<u32, TracefsError> {
    fields(tracefs, category, event)?
        .into_iter()
        .find_map(|(name, offset)| (name == field).then_some(offset))
        .ok_or(TracefsError::NoField {
            event: format!("{category}:{event}"),
            field: field.to_string(),
        })
}

/// Every field of tracepoint `category:event`'s record, in order, with its byte offset.
pub fn fields(
    tracefs: &Path,
    category: &str,
    event: &str,
) -> Result<Vec<(String, u32)>, TracefsError> {
    let path = tracefs
        .join("events")
        .join(category)
        .join(event)
        .join("format");
    let format = std::fs::read_to_string(&path).map_err(|source| TracefsError::Format {
        event: format!("{category}:{event}"),
        source,
    })?;
    Ok(parse_fields(&format))
}

/// The `field:<type> <name>[..];\toffset:N;` lines of a tracefs format file.
fn parse_fields(format: &str) -> Vec<(String, u32)> {
    format
        .lines()
        .filter_map(|line| {
            let mut parts = line.trim().split(';').map(str::trim);
            let decl = parts.next()?.strip_prefix("field:")?;
            let name = decl.rsplit([' ', '*']).next()?;
            let name = name.split('[').next()?;
            let offset = parts
                .find_map(|p| p.strip_prefix("offset:"))?
                .parse()
                .ok()?;
            Some((name.to_string(), offset))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::parse_fields;

    fn parse_field_offset(format: &str, field: &str) -> Option<u32> {
        parse_fields(format)
            .into_iter()
            .find_map(|(name, offset)| (name == field).then_some(offset))
    }

    const EXIT_FORMAT: &str = "name: sched_process_exit\nID: 369\nformat:\n\
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
        \tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\
        \tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;\n\
        \tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;\n";

    #[test]
    fn reads_offsets_of_plain_and_array_fields() {
        assert_eq!(parse_field_offset(EXIT_FORMAT, "group_dead"), Some(32));
        assert_eq!(parse_field_offset(EXIT_FORMAT, "comm"), Some(8));
        assert_eq!(parse_field_offset(EXIT_FORMAT, "pid"), Some(24));
        assert_eq!(parse_field_offset(EXIT_FORMAT, "prio"), None);
    }
}
