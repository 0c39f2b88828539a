//! Compiles `proto/rcr.proto` into Rust with protox (no system `protoc`) and prost-build.
//!
//! Every generated type derives `serde::Serialize` for `rcr show`. Fields whose JSON form
//! should differ from serde's default get a `serialize_with` attribute, chosen by walking
//! the descriptors so new fields are covered without editing this file:
//! `bytes` become lowercase hex strings and enum fields (`i32` in prost) become the
//! proto names of their values.

use protox::prost_reflect::{DescriptorPool, EnumDescriptor, FieldDescriptor, Kind};

const PROTO_DIR: &str = "proto";
const PROTO_FILE: &str = "rcr.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_DIR}");

    let mut compiler = protox::Compiler::new([PROTO_DIR])?;
    compiler
        .include_source_info(true)
        .include_imports(true)
        .open_file(PROTO_FILE)?;
    let pool = compiler.descriptor_pool();

    let mut config = prost_build::Config::new();
    config.type_attribute(".", "#[derive(::serde::Serialize)]");
    for (field_path, helper) in serde_overrides(&pool) {
        config.field_attribute(
            field_path,
            format!("#[serde(serialize_with = \"{helper}\")]"),
        );
    }
    // Oneof variants are camel-cased too; JSON shows the proto field names.
    for message in pool.all_messages() {
        for field in message.fields().filter(real_oneof) {
            config.field_attribute(
                prost_field_path(&field),
                format!("#[serde(rename = \"{}\")]", field.name()),
            );
        }
    }
    // prost strips enum prefixes and camel-cases variants; JSON shows the proto names.
    for e in pool.all_enums() {
        for value in e.values() {
            config.field_attribute(
                format!(".{}.{}", e.full_name(), value.name()),
                format!("#[serde(rename = \"{}\")]", value.name()),
            );
        }
    }
    config.compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}

/// The fields whose JSON form needs a helper from `src/json.rs`, with that helper's path.
fn serde_overrides(pool: &DescriptorPool) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for message in pool.all_messages().filter(|m| !m.is_map_entry()) {
        for field in message.fields() {
            // Map values keep serde's default form: the schema has none that need more.
            if field.is_map() {
                continue;
            }
            let shape = shape_of(&field);
            let helper = match field.kind() {
                Kind::Bytes => format!("crate::json::hex_{shape}"),
                Kind::Enum(e) => format!("crate::json::enum_{shape}::<{}, _>", rust_path(&e)),
                _ => continue,
            };
            out.push((prost_field_path(&field), helper));
        }
    }
    out
}

/// Whether the field sits in a `oneof` of the schema (not proto3 `optional`'s synthetic one).
fn real_oneof(field: &FieldDescriptor) -> bool {
    field.containing_oneof().is_some_and(|o| !o.is_synthetic())
}

/// The path prost-build matches field attributes against: a oneof's fields are
/// variants of an enum named after the oneof.
fn prost_field_path(field: &FieldDescriptor) -> String {
    let message = field.parent_message().full_name();
    match field.containing_oneof().filter(|o| !o.is_synthetic()) {
        Some(oneof) => format!(".{message}.{}.{}", oneof.name(), field.name()),
        None => format!(".{message}.{}", field.name()),
    }
}

/// How prost lays the field out in Rust: `one` (bare value, also a oneof variant),
/// `list` (`Vec`) or `option` (proto3 `optional`).
fn shape_of(field: &FieldDescriptor) -> &'static str {
    if field.is_list() {
        "list"
    } else if field.field_descriptor_proto().proto3_optional() {
        "option"
    } else {
        "one"
    }
}

/// The Rust path prost gives an enum inside `crate::pb`: enclosing messages become
/// snake_case modules.
fn rust_path(e: &EnumDescriptor) -> String {
    let mut modules = Vec::new();
    let mut parent = e.parent_message();
    while let Some(m) = parent {
        modules.push(snake_case(m.name()));
        parent = m.parent_message();
    }
    modules.reverse();
    let mut path = String::from("crate::pb::");
    for m in modules {
        path.push_str(&m);
        path.push_str("::");
    }
    path.push_str(e.name());
    path
}

/// Proto message names are UpperCamelCase; prost's module names are their snake_case form.
fn snake_case(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}
