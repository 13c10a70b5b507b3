//! The only `#[wasm_bindgen]` surface. Errors cross the boundary as `JsError` with the same message.

use wasm_bindgen::prelude::*;

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

/// A JSON description of the device the page would use: the WebGPU adapter, or the CPU fallback
/// with the reason WebGPU is not available.
#[wasm_bindgen(js_name = deviceInfo)]
pub async fn device_info() -> Result<String, JsError> {
    let info = match crate::gpu::Gpu::new().await {
        Ok(g) => serde_json::json!({ "device": "gpu", "adapter": g.info() }),
        Err(e) => serde_json::json!({ "device": "cpu", "reason": e.to_string() }),
    };
    Ok(info.to_string())
}
