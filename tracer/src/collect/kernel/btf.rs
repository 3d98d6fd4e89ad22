//! Struct field offsets from the kernel's own BTF (`/sys/kernel/btf/vmlinux`).
//!
//! The eBPF programs read a few kernel structs (task_struct, mm_struct, vm_area_struct, pt_regs,
//! ...) whose layout changes between builds. Rust eBPF has no CO-RE relocations, so the loader
//! looks the offsets up here and hands them to the programs as constants.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
};

use thiserror::Error;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, Error)]
pub enum BtfError {
    #[error("cannot read kernel BTF at {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel BTF is malformed: {0}")]
    Malformed(&'static str),
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF has no field {field} in struct {strukt}")]
    NoField { strukt: String, field: String },
    #[error("kernel BTF has no enumerator {0}")]
    NoEnumerator(String),
}

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

struct Member {
    name_off: u32,
    type_id: u32,
    bit_offset: u32,
}

struct Type {
    name_off: u32,
    kind: u32,
    /// The size of structs, unions and enums; the referenced type for typedefs and modifiers.
    type_ref: u32,
    members: Vec<Member>,
}

/// The parsed type section: just enough to find struct members and enum values.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    structs_by_name: HashMap<String, u32>,
    /// Names of typedefs: `btf_trace_<event>` says a tracepoint can be attached as tp_btf.
    typedefs: HashSet<String>,
    /// Enumerator name -> value, over every enum.
    enumerators: HashMap<String, i64>,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(BtfError::Malformed("truncated"))
}

/// Reads the type at `at` and moves past it (and its members); an enum's enumerators go to
/// `enumerators` as (name offset, value).
fn read_type(
    data: &[u8],
    at: &mut usize,
    enumerators: &mut Vec<(u32, i64)>,
) -> Result<Type, BtfError> {
    let name_off = u32_at(data, *at)?;
    let info = u32_at(data, *at + 4)?;
    let size_or_type = u32_at(data, *at + 8)?;
    *at += 12;
    let vlen = (info & 0xffff) as usize;
    let kind = (info >> 24) & 0x1f;
    let kind_flag = info >> 31 == 1;
    let mut members = Vec::new();
    match kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => *at += 4,
        KIND_ARRAY => *at += 12,
        KIND_STRUCT | KIND_UNION => {
            for _ in 0..vlen {
                let offset = u32_at(data, *at + 8)?;
                members.push(Member {
                    name_off: u32_at(data, *at)?,
                    type_id: u32_at(data, *at + 4)?,
                    // With kind_flag the top 8 bits hold a bitfield size.
                    bit_offset: if kind_flag {
                        offset & 0x00ff_ffff
                    } else {
                        offset
                    },
                });
                *at += 12;
            }
        }
        KIND_ENUM => {
            for _ in 0..vlen {
                enumerators.push((u32_at(data, *at)?, u32_at(data, *at + 4)? as i32 as i64));
                *at += 8;
            }
        }
        KIND_FUNC_PROTO => *at += 8 * vlen,
        KIND_DATASEC | KIND_ENUM64 => *at += 12 * vlen,
        _ => {}
    }
    Ok(Type {
        name_off,
        kind,
        type_ref: size_or_type,
        members,
    })
}

impl Btf {
    pub fn from_sys_fs() -> Result<Btf, BtfError> {
        Btf::from_file(Path::new(VMLINUX_BTF))
    }

    pub fn from_file(path: &Path) -> Result<Btf, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Btf::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Btf, BtfError> {
        if data.get(0..2) != Some(&[0x9f, 0xeb]) {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types_at = hdr_len + type_off;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?
            .to_vec();

        // Type ids start at 1; index 0 stands for void.
        let mut types = vec![Type {
            name_off: 0,
            kind: 0,
            type_ref: 0,
            members: Vec::new(),
        }];
        let mut enumerator_names = Vec::new();
        let mut at = types_at;
        while at < types_at + type_len {
            types.push(read_type(data, &mut at, &mut enumerator_names)?);
        }
        Ok(Btf::index(types, strings, enumerator_names))
    }

    /// The lookups by name: structs, typedefs and enumerators.
    fn index(types: Vec<Type>, strings: Vec<u8>, enumerator_names: Vec<(u32, i64)>) -> Btf {
        let mut btf = Btf {
            types,
            strings,
            structs_by_name: HashMap::new(),
            typedefs: HashSet::new(),
            enumerators: HashMap::new(),
        };
        for (name_off, value) in enumerator_names {
            let name = btf.name(name_off).to_string();
            btf.enumerators.entry(name).or_insert(value);
        }
        for (id, ty) in btf.types.iter().enumerate() {
            if ty.kind == KIND_STRUCT && !ty.members.is_empty() {
                let name = btf.name(ty.name_off).to_string();
                btf.structs_by_name.entry(name).or_insert(id as u32);
            } else if ty.kind == KIND_TYPEDEF {
                let name = btf.name(ty.name_off).to_string();
                btf.typedefs.insert(name);
            }
        }
        btf
    }

    fn name(&self, offset: u32) -> &str {
        let rest = self.strings.get(offset as usize..).unwrap_or_default();
        let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let ty = self.types.get(id as usize)?;
            match ty.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = ty.type_ref
                }
                _ => return Some(ty),
            }
        }
        None
    }

    /// Byte offset of `field` in `struct name`, looking through anonymous structs and unions.
    pub fn field_offset(&self, strukt: &str, field: &str) -> Result<u32, BtfError> {
        let id = *self
            .structs_by_name
            .get(strukt)
            .ok_or_else(|| BtfError::NoStruct(strukt.to_string()))?;
        self.find_member(&self.types[id as usize], field, 0)
            .map(|bits| bits / 8)
            .ok_or_else(|| BtfError::NoField {
                strukt: strukt.to_string(),
                field: field.to_string(),
            })
    }

    /// Size in bytes of `struct name`.
    pub fn struct_size(&self, strukt: &str) -> Result<u32, BtfError> {
        let id = *self
            .structs_by_name
            .get(strukt)
            .ok_or_else(|| BtfError::NoStruct(strukt.to_string()))?;
        Ok(self.types[id as usize].type_ref)
    }

    /// Whether `struct name` exists (with members).
    pub fn has_struct(&self, strukt: &str) -> bool {
        self.structs_by_name.contains_key(strukt)
    }

    /// Whether a typedef `name` exists.
    pub fn has_typedef(&self, name: &str) -> bool {
        self.typedefs.contains(name)
    }

    /// The value of an enumerator (e.g. MM_ANONPAGES).
    pub fn enum_value(&self, name: &str) -> Result<i64, BtfError> {
        self.enumerators
            .get(name)
            .copied()
            .ok_or_else(|| BtfError::NoEnumerator(name.to_string()))
    }

    fn find_member(&self, ty: &Type, field: &str, base_bits: u32) -> Option<u32> {
        for member in &ty.members {
            let bits = base_bits + member.bit_offset;
            if member.name_off != 0 {
                if self.name(member.name_off) == field {
                    return Some(bits);
                }
                continue;
            }
            let inner = self.resolve(member.type_id)?;
            if matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                && let Some(found) = self.find_member(inner, field, bits)
            {
                return Some(found);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob: struct outer { int a; union { long b; long c; }; }.
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0b\0c\0long\0kind\0ONE\0TWO\0".to_vec();
        let name = |s: &str| {
            let needle = format!("\0{s}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| words.iter().for_each(|w| types.extend(w.to_le_bytes()));
        push(&[name("int"), KIND_INT << 24, 4, 32]); // id 1
        push(&[name("long"), KIND_INT << 24, 8, 64]); // id 2
        push(&[
            0,
            (KIND_UNION << 24) | 2,
            8,
            name("b"),
            2,
            0,
            name("c"),
            2,
            0,
        ]); // id 3
        push(&[
            name("outer"),
            (KIND_STRUCT << 24) | 2,
            16,
            name("a"),
            1,
            0,
            0,
            3,
            64,
        ]); // id 4
        let mut blob = Vec::new();
        for word in [
            0xeb9f_u32 | (1 << 16),
            24,
            0,
            types.len() as u32,
            types.len() as u32,
        ]
        .into_iter()
        .chain([strings.len() as u32])
        {
            blob.extend(word.to_le_bytes());
        }
        blob.extend(types);
        blob.extend(&strings);
        blob
    }

    #[test]
    fn finds_fields_sizes_and_enumerators() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.field_offset("outer", "a").unwrap(), 0);
        assert_eq!(btf.field_offset("outer", "b").unwrap(), 8);
        assert_eq!(btf.field_offset("outer", "c").unwrap(), 8);
        assert!(matches!(
            btf.field_offset("outer", "zz"),
            Err(BtfError::NoField { .. })
        ));
        assert!(matches!(
            btf.field_offset("nope", "a"),
            Err(BtfError::NoStruct(_))
        ));
    }
}
