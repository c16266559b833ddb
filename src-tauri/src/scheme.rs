//! The `likeness` URI scheme: pictures under the workspace folder, and nothing else.
//! `likeness://localhost/<rel>` (or `http://likeness.localhost/<rel>` on Windows) maps to
//! `<workspace>/<rel>` with each segment percent-decoded; `..`, absolute paths, hidden files and
//! anything but pictures are refused.

use std::path::{Component, Path, PathBuf};

use percent_encoding::percent_decode_str;
use tauri::http::{Response, StatusCode, Uri, header};

/// Picture types the web view may load, by extension.
fn content_type(path: &Path) -> Option<&'static str> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    Some(match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        _ => return None,
    })
}

/// The file under `root` that `uri_path` names, or why not.
pub fn resolve(root: &Path, uri_path: &str) -> Result<PathBuf, &'static str> {
    let mut path = root.to_path_buf();
    let mut any = false;
    for segment in uri_path.split('/').filter(|s| !s.is_empty()) {
        let decoded = percent_decode_str(segment)
            .decode_utf8()
            .map_err(|_| "bad encoding")?;
        let part = Path::new(decoded.as_ref());
        let mut comps = part.components();
        match (comps.next(), comps.next()) {
            (Some(Component::Normal(name)), None) if !name.to_string_lossy().starts_with('.') => {
                path.push(name);
                any = true;
            }
            _ => return Err("outside the workspace"),
        }
    }
    if !any {
        return Err("no file named");
    }
    if content_type(&path).is_none() {
        return Err("not a picture");
    }
    Ok(path)
}

fn reply(status: StatusCode, kind: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, kind)
        .header(header::CACHE_CONTROL, "no-cache")
        .header("X-Content-Type-Options", "nosniff")
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

/// Answers one request of the scheme.
pub fn serve(root: &Path, uri: &Uri) -> Response<Vec<u8>> {
    let path = match resolve(root, uri.path()) {
        Ok(p) => p,
        Err(why) => {
            tracing::debug!("likeness:// {}: {why}", uri.path());
            return reply(StatusCode::FORBIDDEN, "text/plain", why.as_bytes().to_vec());
        }
    };
    // A symbolic link out of the workspace is refused too.
    let inside = match (path.canonicalize(), root.canonicalize()) {
        (Ok(p), Ok(r)) => p.starts_with(r),
        _ => false,
    };
    if !inside {
        return reply(StatusCode::NOT_FOUND, "text/plain", b"not found".to_vec());
    }
    match std::fs::read(&path) {
        Ok(bytes) => reply(
            StatusCode::OK,
            content_type(&path).unwrap_or("application/octet-stream"),
            bytes,
        ),
        Err(_) => reply(StatusCode::NOT_FOUND, "text/plain", b"not found".to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_encoded_segments_inside_the_root() {
        let root = Path::new("/ws");
        assert_eq!(
            resolve(root, "/projects/1/photos/a%20b%C3%A9.png").unwrap(),
            Path::new("/ws/projects/1/photos/a bé.png")
        );
    }

    #[test]
    fn refuses_escapes_hidden_files_and_non_pictures() {
        let root = Path::new("/ws");
        for bad in [
            "/../etc/passwd.png",
            "/projects/%2E%2E/x.png",
            "/projects/..%2F..%2Fx.png",
            "/%2Fetc%2Fx.png",
            "/.hidden.png",
            "/likeness.db",
            "/",
        ] {
            assert!(resolve(root, bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn serves_a_picture_and_404s_a_missing_one() {
        let root = std::env::temp_dir().join(format!("likeness-scheme-{}", std::process::id()));
        std::fs::create_dir_all(root.join("g")).unwrap();
        std::fs::write(root.join("g/x.png"), b"\x89PNG").unwrap();
        let ok = serve(&root, &"likeness://localhost/g/x.png".parse().unwrap());
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(ok.headers()[header::CONTENT_TYPE], "image/png");
        assert_eq!(ok.body(), b"\x89PNG");
        let missing = serve(&root, &"likeness://localhost/g/y.png".parse().unwrap());
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        let db = serve(&root, &"likeness://localhost/likeness.db".parse().unwrap());
        assert_eq!(db.status(), StatusCode::FORBIDDEN);
        let _ = std::fs::remove_dir_all(&root);
    }
}
