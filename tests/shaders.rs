//! Every shaders/*.wgsl parses and validates with naga (no GPU needed), and every file is one
//! that the GPU device embeds.

use std::path::Path;

#[test]
fn every_shader_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("wgsl") {
            continue;
        }
        let src = std::fs::read_to_string(&path).unwrap();
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
            localtune::gpu::SHADERS.iter().any(|(name, text)| *name == family && *text == src),
            "{family}.wgsl is not embedded in gpu::SHADERS"
        );
        seen += 1;
    }
    assert_eq!(seen, localtune::gpu::SHADERS.len(), "gpu::SHADERS lists a file that is not in shaders/");
}
