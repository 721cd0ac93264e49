//! The web UI's files, embedded in the binary: `ui/index.html`, `ui/app.js`,
//! `ui/style.css` (the project's own) and uPlot's script and style sheet (from npm, pinned
//! by `ui/package-lock.json`, installed by `build.rs`). The pages are drawn in the browser
//! from the JSON the agent already serves (`/api/v1/*`); nothing is fetched from anywhere
//! else at run time.

/// One embedded file: its name under `/ui/`, its `Content-Type` and its bytes.
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub bytes: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:literal, $path:literal) => {
        Asset {
            name: $name,
            content_type: $type,
            bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../ui/", $path)),
        }
    };
}

/// The page every route of the UI starts from (`GET /`).
pub const INDEX: Asset = asset!("index.html", "text/html; charset=utf-8", "index.html");

/// Everything under `/ui/`.
pub const ASSETS: &[Asset] = &[
    asset!("app.js", "text/javascript; charset=utf-8", "app.js"),
    asset!("style.css", "text/css; charset=utf-8", "style.css"),
    asset!(
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        "node_modules/uplot/dist/uPlot.iife.min.js"
    ),
    asset!(
        "uPlot.min.css",
        "text/css; charset=utf-8",
        "node_modules/uplot/dist/uPlot.min.css"
    ),
];

/// The address of the UI's page `route` (e.g. `alerts`, `role/shop`) under `external_url`
/// (`metrics.external_url`): `https://db1.example.com:8181/#/alerts`; `None` without one.
pub fn link(external_url: Option<&str>, route: &str) -> Option<String> {
    external_url.map(|base| format!("{}/#/{route}", base.trim_end_matches('/')))
}

/// The asset named `name`, if any.
pub fn asset(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

#[cfg(test)]
mod tests {
    #[test]
    fn links_join_the_external_url_and_the_route() {
        assert_eq!(
            super::link(Some("https://db1:8181/"), "quotas").as_deref(),
            Some("https://db1:8181/#/quotas")
        );
        assert_eq!(super::link(None, "quotas"), None);
    }

    #[test]
    fn the_index_loads_every_asset_it_names_and_nothing_remote() {
        let index = std::str::from_utf8(super::INDEX.bytes).unwrap();
        for a in super::ASSETS {
            assert!(
                index.contains(&format!("/ui/{}", a.name)),
                "{} unused",
                a.name
            );
        }
        for a in std::iter::once(&super::INDEX).chain(super::ASSETS) {
            let text = String::from_utf8_lossy(a.bytes);
            assert!(
                !text.contains("src=\"http") && !text.contains("href=\"http"),
                "{} loads something remote",
                a.name
            );
        }
    }
}
