//! Bundle sources: a directory, a .tar.gz of one, an https:// URL.

use std::path::Path;

use super::{Bundle, FILES};
use crate::report::Finding;

/// Read a bundle. Files that are missing are simply absent from the result
/// (validation reports them); problems with the source itself are findings.
pub fn load(src: &str, _sha256: Option<&str>) -> Result<Bundle, Vec<Finding>> {
    let dir = Path::new(src);
    let mut bundle = Bundle::default();
    for name in FILES {
        if let Ok(bytes) = std::fs::read(dir.join(name)) {
            bundle.files.insert(name.to_string(), bytes);
        }
    }
    Ok(bundle)
}
