//! Every shaders/*.wgsl parses and validates with naga (no GPU needed), and every file is one
//! that the GPU device embeds; each `Params` struct of ops/params.rs has the size and layout of its
//! WGSL declaration (naga's reflection of the uniform block at binding 0).

use std::path::Path;

#[test]
fn every_shader_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("wgsl") || path.ends_with("prelude.wgsl") {
            continue;
        }
        let file = std::fs::read_to_string(&path).unwrap();
        let src = localtune::gpu::source(&file);
        let module = naga::front::wgsl::parse_str(&src)
            .unwrap_or_else(|e| panic!("{}: {}", path.display(), e.emit_to_string(&src)));
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::empty())
            .validate(&module)
            .unwrap_or_else(|e| panic!("{}: {}", path.display(), e.emit_to_string(&src)));
        // file name = entry-point prefix
        let family = path.file_stem().unwrap().to_str().unwrap();
        assert!(!module.entry_points.is_empty(), "{family}.wgsl has no entry point");
        for ep in &module.entry_points {
            assert!(
                ep.name.starts_with(&format!("{family}_")),
                "{family}.wgsl: entry point `{}` lacks the prefix `{family}_`",
                ep.name
            );
            let [x, y, z] = ep.workgroup_size;
            assert!(
                x * y * z <= 256,
                "{}: workgroup of {} invocations exceeds WebGPU's default 256",
                ep.name,
                x * y * z
            );
        }
        assert!(
            localtune::gpu::SHADERS.iter().any(|(name, text)| *name == family && *text == file),
            "{family}.wgsl is not embedded in gpu::SHADERS"
        );
        seen += 1;
    }
    assert_eq!(seen, localtune::gpu::SHADERS.len(), "gpu::SHADERS lists a file that is not in shaders/");
}

#[test]
fn params_structs_match_their_wgsl_declarations() {
    let mut checked = 0;
    for layout in localtune::ops::params::LAYOUTS {
        let file = localtune::gpu::SHADERS.iter().find(|(n, _)| *n == layout.family).unwrap().1;
        let src = localtune::gpu::source(file);
        let module = naga::front::wgsl::parse_str(&src).unwrap();
        // The uniform block at @group(0) @binding(0).
        let var = module
            .global_variables
            .iter()
            .map(|(_, v)| v)
            .find(|v| v.space == naga::AddressSpace::Uniform && v.binding.as_ref().is_some_and(|b| b.binding == 0))
            .unwrap_or_else(|| panic!("{}.wgsl has no uniform at binding 0", layout.family));
        let ty = &module.types[var.ty];
        let naga::TypeInner::Struct { members, span } = &ty.inner else { panic!("{}: not a struct", layout.family) };
        assert_eq!(
            *span as usize, layout.size,
            "{}: WGSL Params is {span} bytes, Rust {} is {}",
            layout.family, layout.rust_name, layout.size
        );
        for m in members {
            let name = m.name.as_deref().unwrap();
            if name.starts_with('_') {
                continue; // padding
            }
            let (_, offset, size) =
                layout.fields.iter().find(|(n, _, _)| *n == name).unwrap_or_else(|| {
                    panic!("{}: WGSL field `{name}` missing from {}", layout.family, layout.rust_name)
                });
            let wgsl_size = module.types[m.ty].inner.size(module.to_ctx()) as usize;
            assert_eq!(
                (*offset, *size),
                (m.offset as usize, wgsl_size),
                "{}: field `{name}` at (offset, size) {:?} in Rust, {:?} in WGSL",
                layout.family,
                (offset, size),
                (m.offset, wgsl_size)
            );
        }
        for (name, _, _) in layout.fields.iter().filter(|(n, _, _)| !n.starts_with('_')) {
            assert!(
                members.iter().any(|m| m.name.as_deref() == Some(name)),
                "{}: Rust field `{name}` of {} is not in the WGSL Params",
                layout.family,
                layout.rust_name
            );
        }
        checked += 1;
    }
    assert_eq!(checked, localtune::gpu::SHADERS.len(), "every shader family has its Params layout listed");
}
