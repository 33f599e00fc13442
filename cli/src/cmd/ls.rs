//! `cairn ls`: what a snapshot holds, read directory by directory.

use std::process::ExitCode;
use std::sync::Arc;

use cairn_store::format::dir::{DirEntry, Node};
use cairn_store::ops::walk::SnapshotTree;
use clap::Args;

use crate::repo_args::RepoArgs;
use crate::terminal::safe;

#[derive(Debug, Args)]
pub struct LsArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    pick: super::restore::PickArgs,
    /// The directory or file to list (default: the top of the snapshot).
    #[arg(value_name = "PATH")]
    path: Option<String>,
    /// Everything below, not only one level.
    #[arg(long, short)]
    recursive: bool,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: LsArgs) -> anyhow::Result<ExitCode> {
    let (repo, snapshot) = args.pick.pick(&args.repo).await?;
    let tree = SnapshotTree::open(Arc::new(repo.blob_reader()), &snapshot)?;
    let path = args.path.as_deref().unwrap_or("").trim_matches('/');
    let walk = if path.is_empty() {
        Some(tree.walk().await?)
    } else {
        tree.walk_at(path.as_bytes()).await?
    };
    let Some(mut walk) = walk else {
        return Err(cairn_store::Error::NotFound {
            what: format!("{path:?} in snapshot {}", snapshot.id.short()),
            hint: format!("list the top with `cairn ls {}`", snapshot.id.short()),
        }
        .into());
    };
    // The top shows its entries; a named directory shows what it holds.
    let shown_depth = usize::from(!path.is_empty());
    while let Some(w) = walk.next().await? {
        let is_dir = matches!(w.entry.node, Node::Dir { .. });
        if !args.recursive && w.depth >= shown_depth && is_dir {
            walk.skip();
        }
        if w.depth < shown_depth && is_dir {
            continue; // the named directory itself
        }
        if args.json {
            println!(
                "{}",
                serde_json::to_string(&json_of(&w.display(), &w.entry))?
            );
        } else {
            println!("{}", line(&w.display(), &w.entry));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn line(path: &str, e: &DirEntry) -> String {
    let owner = e.owner.as_ref().map_or_else(
        || "-".to_string(),
        |o| {
            let name = |n: &[u8], id: u32| {
                if n.is_empty() {
                    id.to_string()
                } else {
                    String::from_utf8_lossy(n).into_owned()
                }
            };
            format!("{}/{}", name(&o.user, o.uid), name(&o.group, o.gid))
        },
    );
    let time = e.mtime.and_then(|t| t.to_timestamp()).map_or_else(
        || "-".to_string(),
        |t| t.strftime("%Y-%m-%d %H:%M:%S").to_string(),
    );
    let target = match &e.node {
        Node::Symlink { target } => format!(" -> {}", String::from_utf8_lossy(target)),
        _ => String::new(),
    };
    format!(
        "{}{} {:<17} {:>12} {} {}{}",
        kind_char(&e.node),
        mode_string(e.mode),
        safe(&owner),
        e.size,
        time,
        safe(path),
        safe(&target)
    )
}

fn kind_char(node: &Node) -> char {
    match node {
        Node::File { .. } => '-',
        Node::Dir { .. } => 'd',
        Node::Symlink { .. } => 'l',
        Node::Fifo => 'p',
        Node::CharDevice { .. } => 'c',
        Node::BlockDevice { .. } => 'b',
    }
}

fn mode_string(mode: Option<u32>) -> String {
    let Some(m) = mode else {
        return "?????????".into();
    };
    // Per class (user, group, other): r, w, and x or its special bit.
    let class = |shift: u32, special: u32, set: char| {
        let bits = (m >> shift) & 0o7;
        let x = match (bits & 1 != 0, m & special != 0) {
            (true, true) => set,
            (false, true) => set.to_ascii_uppercase(),
            (true, false) => 'x',
            (false, false) => '-',
        };
        [
            if bits & 4 != 0 { 'r' } else { '-' },
            if bits & 2 != 0 { 'w' } else { '-' },
            x,
        ]
    };
    [
        class(6, 0o4000, 's'),
        class(3, 0o2000, 's'),
        class(0, 0o1000, 't'),
    ]
    .concat()
    .into_iter()
    .collect()
}

fn json_of(path: &str, e: &DirEntry) -> serde_json::Value {
    let kind = match &e.node {
        Node::File { .. } => "file",
        Node::Dir { .. } => "dir",
        Node::Symlink { .. } => "symlink",
        Node::Fifo => "fifo",
        Node::CharDevice { .. } => "char_device",
        Node::BlockDevice { .. } => "block_device",
    };
    let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    serde_json::json!({
        "path": path,
        "kind": kind,
        "size": e.size,
        "mode": e.mode,
        "uid": e.owner.as_ref().map(|o| o.uid),
        "gid": e.owner.as_ref().map(|o| o.gid),
        "user": e.owner.as_ref().map(|o| lossy(&o.user)),
        "group": e.owner.as_ref().map(|o| lossy(&o.group)),
        "mtime": e.mtime.and_then(|t| t.to_timestamp()).map(|t| t.to_string()),
        "link_group": e.link_group,
        "sparse": e.sparse,
        "target": match &e.node { Node::Symlink { target } => Some(lossy(target)), _ => None },
        "xattrs": e.xattrs.iter().map(|x| lossy(&x.name)).collect::<Vec<_>>(),
    })
}
