//! `oncely new <name>`: writes a new domain — one `.rs` file with its request type, its
//! checked command, an orchestrator calling an HTTP API and a test against a stub of that
//! API — into a crate you name, or into a new crate of a workspace.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use toml_edit::{Array, DocumentMut, InlineTable, Item, Table, Value};

/// The file `oncely new` writes, with `{{module}}`, `{{Type}}`, `{{DOMAIN}}` and
/// `{{resource}}` to fill in.
const TEMPLATE: &str = include_str!("../templates/domain.rs");

/// Flags of `oncely new`.
#[derive(Debug, clap::Args)]
pub(crate) struct NewArgs {
    /// The domain's name: lowercase letters and digits, words joined by `-` or `_`
    /// (`sms`, `file-upload`).
    name: String,
    /// Add the domain to this existing crate (its directory): src/{name}.rs, a `mod`
    /// line in its lib.rs or main.rs, and the dependencies it lacks in its Cargo.toml.
    #[arg(long, value_name = "CRATE_DIR", conflicts_with = "workspace")]
    into: Option<PathBuf>,
    /// Make a new crate for the domain in this workspace (under crates/ when there is one)
    /// and add it to the workspace's members.
    #[arg(long, value_name = "DIR", default_value = ".")]
    workspace: PathBuf,
    /// The plural in its paths, `/v1/{resource}` (default: the name, plus `s`).
    #[arg(long)]
    resource: Option<String>,
    /// A checkout of oncely to depend on by path (default: the one this binary was built
    /// from). Workspaces that declare oncely in `[workspace.dependencies]` use that.
    #[arg(long, value_name = "DIR")]
    oncely_path: Option<PathBuf>,
}

/// The names a domain is known by.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Names {
    /// `file-upload`: the crate's name.
    kebab: String,
    /// `file_upload`: the module.
    module: String,
    /// `FileUpload`: the types.
    pascal: String,
    /// `FILE_UPLOAD`: the domain.
    upper: String,
    /// `file-uploads`: the resource.
    resource: String,
}

const KEYWORDS: &[&str] = &[
    "as", "async", "await", "box", "break", "const", "continue", "crate", "dyn", "else", "enum",
    "extern", "false", "fn", "for", "gen", "if", "impl", "in", "let", "loop", "match", "mod",
    "move", "mut", "pub", "ref", "return", "self", "static", "struct", "super", "trait", "true",
    "try", "type", "unsafe", "use", "where", "while", "yield",
];

impl Names {
    fn new(name: &str, resource: Option<&str>) -> anyhow::Result<Self> {
        let words: Vec<&str> = name.split(['-', '_']).collect();
        let word_ok = |w: &&str| {
            !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        };
        ensure!(
            name.len() <= 40
                && name.starts_with(|c: char| c.is_ascii_lowercase())
                && words.iter().all(word_ok),
            "{name:?} is not a domain name: use lowercase letters and digits, words joined by - or _ (sms, file-upload), at most 40 characters"
        );
        let module = words.join("_");
        ensure!(
            !KEYWORDS.contains(&module.as_str()),
            "{name:?} is a Rust keyword; choose another name"
        );
        let kebab = words.join("-");
        let pascal = words
            .iter()
            .map(|w| w[..1].to_ascii_uppercase() + &w[1..])
            .collect();
        let resource = match resource {
            Some(resource) => {
                let ok = !resource.is_empty()
                    && resource
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                ensure!(
                    ok,
                    "--resource {resource:?}: use lowercase letters, digits and -"
                );
                resource.to_owned()
            }
            None if kebab.ends_with('s') => kebab.clone(),
            None => format!("{kebab}s"),
        };
        Ok(Self {
            upper: module.to_ascii_uppercase(),
            kebab,
            module,
            pascal,
            resource,
        })
    }

    fn render(&self) -> String {
        TEMPLATE
            .replace("{{module}}", &self.module)
            .replace("{{Type}}", &self.pascal)
            .replace("{{DOMAIN}}", &self.upper)
            .replace("{{resource}}", &self.resource)
    }
}

/// One dependency of the generated file.
struct Dependency {
    name: &'static str,
    /// An oncely crate (by path) or a crates.io one (by version).
    oncely: bool,
    version: &'static str,
    features: &'static [&'static str],
    dev: bool,
}

const DEPENDENCIES: &[Dependency] = &[
    Dependency {
        name: "oncely",
        oncely: true,
        version: "",
        features: &[],
        dev: false,
    },
    Dependency {
        name: "oncely-http",
        oncely: true,
        version: "",
        features: &[],
        dev: false,
    },
    Dependency {
        name: "oncely-reqwest",
        oncely: true,
        version: "",
        features: &[],
        dev: false,
    },
    Dependency {
        name: "schemars",
        oncely: false,
        version: "1",
        features: &[],
        dev: false,
    },
    Dependency {
        name: "serde",
        oncely: false,
        version: "1",
        features: &["derive"],
        dev: false,
    },
    Dependency {
        name: "serde_json",
        oncely: false,
        version: "1",
        features: &[],
        dev: false,
    },
    Dependency {
        name: "oncely-sqlx",
        oncely: true,
        version: "",
        features: &["sqlite"],
        dev: true,
    },
    Dependency {
        name: "axum",
        oncely: false,
        version: "0.8",
        features: &[],
        dev: true,
    },
    Dependency {
        name: "tokio",
        oncely: false,
        version: "1",
        features: &["macros", "rt-multi-thread", "net"],
        dev: true,
    },
];

/// Where oncely's crates are: `--oncely-path`, or the checkout this binary was built from.
fn oncely_source(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let root = flag.map_or(built_from, Path::to_path_buf);
    ensure!(
        root.join("crates/oncely/Cargo.toml").exists(),
        "no oncely checkout at {}: pass --oncely-path DIR (a clone of oncely)",
        root.display()
    );
    Ok(root.canonicalize()?)
}

fn read_toml(path: &Path) -> anyhow::Result<DocumentMut> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.parse()
        .with_context(|| format!("{} is not valid TOML", path.display()))
}

fn write_new(path: &Path, contents: &str) -> anyhow::Result<()> {
    ensure!(
        !path.exists(),
        "{} exists already; nothing was written",
        path.display()
    );
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

/// The workspace root above `dir` (itself included), with its manifest.
fn workspace_of(dir: &Path) -> Option<(PathBuf, DocumentMut)> {
    let mut at = dir.canonicalize().ok()?;
    loop {
        let manifest = at.join("Cargo.toml");
        if let Ok(document) = read_toml(&manifest)
            && document.get("workspace").is_some()
        {
            return Some((at, document));
        }
        if !at.pop() {
            return None;
        }
    }
}

/// The entry of `dependency` for a crate at `crate_dir`: the workspace's, when it declares
/// it, or by path (oncely) or version.
fn entry(
    dependency: &Dependency,
    workspace: Option<&DocumentMut>,
    crate_dir: &Path,
    oncely: &Path,
) -> anyhow::Result<Item> {
    let mut table = InlineTable::new();
    let declared = workspace
        .and_then(|w| {
            w.get("workspace")?
                .get("dependencies")?
                .get(dependency.name)
        })
        .is_some();
    if declared {
        table.insert("workspace", Value::from(true));
    } else if dependency.oncely {
        let path = oncely.join("crates").join(dependency.name);
        let path = relative(&path, crate_dir).unwrap_or(path);
        table.insert("path", Value::from(path.display().to_string()));
    } else if dependency.features.is_empty() {
        return Ok(toml_edit::value(dependency.version));
    } else {
        table.insert("version", Value::from(dependency.version));
    }
    if !dependency.features.is_empty() {
        let features: Array = dependency.features.iter().copied().collect();
        table.insert("features", Value::Array(features));
    }
    Ok(Item::Value(Value::InlineTable(table)))
}

/// `path` relative to `base`, when both are absolute.
fn relative(path: &Path, base: &Path) -> Option<PathBuf> {
    let base = base.canonicalize().ok()?;
    let path = path.canonicalize().ok()?;
    let common = path
        .components()
        .zip(base.components())
        .take_while(|(a, b)| a == b)
        .count();
    let mut relative = PathBuf::new();
    for _ in base.components().skip(common) {
        relative.push("..");
    }
    for part in path.components().skip(common) {
        relative.push(part);
    }
    Some(relative)
}

/// Adds the dependencies `manifest` lacks; returns their names.
fn add_dependencies(
    manifest: &mut DocumentMut,
    workspace: Option<&DocumentMut>,
    crate_dir: &Path,
    oncely: &Path,
) -> anyhow::Result<Vec<&'static str>> {
    let mut added = Vec::new();
    for dependency in DEPENDENCIES {
        let section = if dependency.dev {
            "dev-dependencies"
        } else {
            "dependencies"
        };
        let table = manifest
            .entry(section)
            .or_insert_with(|| Item::Table(Table::new()))
            .as_table_mut()
            .with_context(|| format!("[{section}] is not a table"))?;
        if table.contains_key(dependency.name) {
            continue;
        }
        table.insert(
            dependency.name,
            entry(dependency, workspace, crate_dir, oncely)?,
        );
        added.push(dependency.name);
    }
    Ok(added)
}

/// Adds `member` to the workspace's members unless one of them covers it already.
fn add_member(root: &Path, workspace: &mut DocumentMut, member: &str) -> anyhow::Result<bool> {
    let members = workspace["workspace"]
        .as_table_mut()
        .context("[workspace] is not a table")?
        .entry("members")
        .or_insert_with(|| toml_edit::value(Array::new()))
        .as_array_mut()
        .context("workspace.members is not an array")?;
    let covered = members.iter().filter_map(|m| m.as_str()).any(|pattern| {
        pattern == member
            || pattern
                .strip_suffix("/*")
                .is_some_and(|dir| Path::new(member).parent() == Some(Path::new(dir)))
    });
    if covered {
        return Ok(false);
    }
    members.push(member);
    std::fs::write(root.join("Cargo.toml"), workspace.to_string())?;
    Ok(true)
}

pub(crate) fn run(args: NewArgs) -> anyhow::Result<()> {
    let names = Names::new(&args.name, args.resource.as_deref())?;
    let oncely = oncely_source(args.oncely_path.as_deref())?;
    match &args.into {
        Some(crate_dir) => into_crate(&names, crate_dir, &oncely),
        None => new_crate(&names, &args.workspace, &oncely),
    }
}

/// Adds the domain to the crate at `crate_dir`.
fn into_crate(names: &Names, crate_dir: &Path, oncely: &Path) -> anyhow::Result<()> {
    let manifest_path = crate_dir.join("Cargo.toml");
    let mut manifest = read_toml(&manifest_path)?;
    ensure!(
        manifest.get("package").is_some(),
        "{} is not a crate's manifest (no [package])",
        manifest_path.display()
    );
    let (root, module_line) = if crate_dir.join("src/lib.rs").exists() {
        (
            crate_dir.join("src/lib.rs"),
            format!("pub mod {};\n", names.module),
        )
    } else if crate_dir.join("src/main.rs").exists() {
        (
            crate_dir.join("src/main.rs"),
            format!("mod {};\n", names.module),
        )
    } else {
        bail!(
            "{} has neither src/lib.rs nor src/main.rs",
            crate_dir.display()
        );
    };
    let file = crate_dir.join("src").join(format!("{}.rs", names.module));
    write_new(&file, &names.render())?;
    let mut text = std::fs::read_to_string(&root)?;
    if !text.ends_with('\n') && !text.is_empty() {
        text.push('\n');
    }
    text.push_str(&module_line);
    std::fs::write(&root, text)?;
    let workspace = workspace_of(crate_dir).map(|(_, document)| document);
    let added = add_dependencies(&mut manifest, workspace.as_ref(), crate_dir, oncely)?;
    std::fs::write(&manifest_path, manifest.to_string())?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "wrote    {}", file.display())?;
    writeln!(
        out,
        "added    `{}` to {}",
        module_line.trim_end(),
        root.display()
    )?;
    if !added.is_empty() {
        writeln!(
            out,
            "added    {} to {}",
            added.join(", "),
            manifest_path.display()
        )?;
    }
    writeln!(
        out,
        "next     cargo test --manifest-path {}",
        manifest_path.display()
    )?;
    Ok(())
}

/// Makes a new crate for the domain in the workspace at `dir`.
fn new_crate(names: &Names, dir: &Path, oncely: &Path) -> anyhow::Result<()> {
    let root = dir
        .canonicalize()
        .with_context(|| format!("no directory {}", dir.display()))?;
    let mut workspace = read_toml(&root.join("Cargo.toml"))?;
    ensure!(
        workspace.get("workspace").is_some(),
        "{} has no [workspace]: run `oncely new` at a workspace's root, or use --into CRATE_DIR",
        root.join("Cargo.toml").display()
    );
    let member = if root.join("crates").is_dir() {
        format!("crates/{}", names.kebab)
    } else {
        names.kebab.clone()
    };
    let crate_dir = root.join(&member);
    ensure!(
        !crate_dir.exists(),
        "{} exists already; nothing was written",
        crate_dir.display()
    );
    let inherits = |key: &str| {
        workspace
            .get("workspace")
            .and_then(|w| w.get("package"))
            .and_then(|p| p.get(key))
            .is_some()
    };
    let mut manifest = DocumentMut::new();
    let mut package = Table::new();
    package.insert("name", toml_edit::value(names.kebab.as_str()));
    for (key, default) in [("version", "0.1.0"), ("edition", "2024")] {
        if inherits(key) {
            let mut inherited = InlineTable::new();
            inherited.insert("workspace", Value::from(true));
            package.insert(key, Item::Value(Value::InlineTable(inherited)));
        } else {
            package.insert(key, toml_edit::value(default));
        }
    }
    package.insert("publish", toml_edit::value(false));
    manifest.insert("package", Item::Table(package));
    std::fs::create_dir_all(crate_dir.join("src"))?;
    add_dependencies(&mut manifest, Some(&workspace), &crate_dir, oncely)?;
    if workspace
        .get("workspace")
        .and_then(|w| w.get("lints"))
        .is_some()
    {
        let mut lints = Table::new();
        lints.insert("workspace", toml_edit::value(true));
        manifest.insert("lints", Item::Table(lints));
    }
    write_new(&crate_dir.join("Cargo.toml"), &manifest.to_string())?;
    let lib = format!(
        "//! The {} domain, served at `/v1/{}`.\n\nmod {};\n\npub use {}::*;\n",
        names.kebab, names.resource, names.module, names.module
    );
    write_new(&crate_dir.join("src/lib.rs"), &lib)?;
    write_new(
        &crate_dir.join(format!("src/{}.rs", names.module)),
        &names.render(),
    )?;
    let added = add_member(&root, &mut workspace, &member)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "wrote    {}/ (Cargo.toml, src/lib.rs, src/{}.rs)",
        crate_dir.display(),
        names.module
    )?;
    if added {
        writeln!(
            out,
            "added    {member:?} to the members of {}",
            root.join("Cargo.toml").display()
        )?;
    }
    writeln!(out, "next     cargo test -p {}", names.kebab)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_derived_and_bad_ones_refused() {
        let names = Names::new("file-upload", None).unwrap();
        assert_eq!(
            (
                names.module.as_str(),
                names.pascal.as_str(),
                names.upper.as_str(),
                names.resource.as_str()
            ),
            ("file_upload", "FileUpload", "FILE_UPLOAD", "file-uploads")
        );
        assert_eq!(Names::new("sms", None).unwrap().resource, "sms");
        assert_eq!(Names::new("sms", Some("texts")).unwrap().resource, "texts");
        for bad in [
            "",
            "Sms",
            "1sms",
            "sms!",
            "a--b",
            "-a",
            "type",
            &"x".repeat(41),
        ] {
            assert!(Names::new(bad, None).is_err(), "{bad:?}");
        }
        assert!(Names::new("sms", Some("Texts")).is_err());
    }

    #[test]
    fn the_template_is_filled_in_everywhere() {
        let file = Names::new("file-upload", None).unwrap().render();
        assert!(!file.contains("{{"), "{file}");
        assert!(file.contains("pub struct FileUploadRequest"));
        assert!(file.contains("const DOMAIN: &'static str = \"FILE_UPLOAD\";"));
        assert!(file.contains("const RESOURCE: &'static str = \"file-uploads\";"));
    }

    #[test]
    fn a_member_under_a_glob_is_not_added_twice() {
        let dir = tempfile::tempdir().unwrap();
        let mut workspace: DocumentMut = "[workspace]\nmembers = [\"crates/*\"]\n".parse().unwrap();
        assert!(!add_member(dir.path(), &mut workspace, "crates/sms").unwrap());
        assert!(add_member(dir.path(), &mut workspace, "sms").unwrap());
        let written = std::fs::read_to_string(dir.path().join("Cargo.toml")).unwrap();
        assert!(written.contains("\"crates/*\", \"sms\""), "{written}");
    }
}
