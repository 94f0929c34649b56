//! Releases (docs/design.md §7): what makes a `v*` tag a release that went through the gate.
//!
//! A release is an annotated tag `vX.Y.Z` (a semantic version) on `main`'s first-parent history
//! — the merge commits `exp flow release` makes, never a commit of a merged branch — whose
//! message is exactly the one `exp flow release` writes for that commit's records. Anything else
//! named `v*` (a lightweight tag, a tag on a feature branch, a hand-written message) did not come
//! through the gate: `exp models` lists it with a warning, `exp model get` refuses it without
//! `--force`, and the server's pre-receive hook refuses to receive it.

use git2::{ObjectType, Oid, Repository, Tree};

use crate::compare::{parse_record, record_blobs, CompareError};

/// The branch releases are made on.
pub const RELEASE_BRANCH: &str = "main";

/// The tag of release `version` (`1.2.0` → `v1.2.0`); `Err` says why `version` is not a semantic
/// version.
pub fn tag_for(version: &str) -> Result<String, String> {
    if version.starts_with('v') {
        return Err(format!(
            "{version:?} is not a version: give it without the v (exp flow release 1.2.0 tags v1.2.0)"
        ));
    }
    semver::Version::parse(version).map_err(|e| {
        format!("{version:?} is not a semantic version MAJOR.MINOR.PATCH (e.g. 1.2.0): {e}")
    })?;
    Ok(format!("v{version}"))
}

/// The message of release tag `tag` on a commit with tree `tree`: the release and, per
/// experiment, its model version, metrics, run and weights.
pub fn message(repo: &Repository, tree: &Tree, tag: &str) -> Result<String, CompareError> {
    let mut lines = vec![format!("Release {tag}"), String::new()];
    let version = tag.trim_start_matches('v');
    for (name, blob) in record_blobs(repo, tree)? {
        let r = parse_record(repo, blob, tag, &name)?;
        let metrics: Vec<String> = r
            .metrics
            .values
            .iter()
            .map(|(k, v)| format!("{k}={v:.4}"))
            .collect();
        lines.push(format!(
            "{name}@{version}: {} (run {}, weights sha256:{})",
            metrics.join(" "),
            crate::report::prefix(&r.run.id, 12),
            r.model.oid
        ));
    }
    Ok(lines.join("\n"))
}

/// Whether the tag object `object`, to be named `refs/tags/<tag>`, is a release. With `main`
/// (a server hook: main as it will be after the push) the tag must name exactly that tip — the
/// commit the gate just judged — never an older commit of main's history, which another push
/// could have made first-parent without a gate ever seeing it. Without it, the tag must be on
/// the first-parent history of main (or of a remote's main, in a clone without a local one).
/// `Err` says why not.
pub fn check(repo: &Repository, tag: &str, object: Oid, main: Option<Oid>) -> Result<(), String> {
    let version = tag
        .strip_prefix('v')
        .ok_or_else(|| format!("{tag} does not start with v"))?;
    tag_for(version)?;
    let annotated = repo.find_tag(object).map_err(|_| {
        format!("{tag} is a lightweight tag; exp flow release makes annotated tags")
    })?;
    let target = annotated
        .target()
        .ok()
        .and_then(|o| o.peel(ObjectType::Commit).ok())
        .and_then(|o| o.into_commit().ok())
        .ok_or_else(|| format!("{tag} does not tag a commit"))?;
    match main {
        Some(tip) => {
            if target.id() != tip {
                return Err(format!(
                    "{tag} tags {}, not {RELEASE_BRANCH}'s tip {} as pushed (a release tags the merge exp flow release makes, pushed with it)",
                    crate::report::short(&target.id().to_string()),
                    crate::report::short(&tip.to_string())
                ));
            }
        }
        None => {
            let tips = release_branch_tips(repo);
            if tips.is_empty() {
                return Err(format!(
                    "there is no {RELEASE_BRANCH} branch to release from"
                ));
            }
            let mut on_history = false;
            for tip in tips {
                on_history |= on_first_parent_history(repo, tip, target.id())?;
            }
            if !on_history {
                return Err(format!(
                    "{tag} tags {}, which is not on {RELEASE_BRANCH}'s first-parent history (releases are the merges exp flow release makes into {RELEASE_BRANCH})",
                    crate::report::short(&target.id().to_string())
                ));
            }
        }
    }
    let tree = target.tree().map_err(|e| e.message().to_string())?;
    let expected = message(repo, &tree, tag).map_err(|e| e.to_string())?;
    let actual = without_signature(annotated.message().unwrap_or(""));
    // `git tag -m` ends the message with a newline; `exp flow release` passes it without.
    if actual.trim_end_matches('\n') != expected {
        return Err(format!(
            "{tag}'s message is not the one exp flow release writes for that commit's records"
        ));
    }
    Ok(())
}

/// A tag message without the signature Git appends to it when the tag is signed
/// (`tag.gpgSign`, `git tag -s`: OpenPGP, SSH or X.509), so that a signed release is the same
/// release. The signature is not verified here: whose key signs is the repository's policy.
fn without_signature(message: &str) -> &str {
    const SIGNATURES: [&str; 3] = [
        "-----BEGIN PGP SIGNATURE-----",
        "-----BEGIN SSH SIGNATURE-----",
        "-----BEGIN SIGNED MESSAGE-----",
    ];
    let mut start = 0;
    for line in message.split_inclusive('\n') {
        if SIGNATURES.iter().any(|s| line.trim_end() == *s) {
            return &message[..start];
        }
        start += line.len();
    }
    message
}

/// [`check`] for an existing tag `refs/tags/<tag>`.
pub fn check_existing(repo: &Repository, tag: &str) -> Result<(), String> {
    let object = repo
        .refname_to_id(&format!("refs/tags/{tag}"))
        .map_err(|_| format!("there is no tag {tag}"))?;
    check(repo, tag, object, None)
}

/// The local main, else every remote's main (a clone whose default branch is develop).
fn release_branch_tips(repo: &Repository) -> Vec<Oid> {
    if let Ok(tip) = repo.refname_to_id(&format!("refs/heads/{RELEASE_BRANCH}")) {
        return vec![tip];
    }
    repo.references_glob(&format!("refs/remotes/*/{RELEASE_BRANCH}"))
        .map(|refs| refs.flatten().filter_map(|r| r.target()).collect())
        .unwrap_or_default()
}

fn on_first_parent_history(repo: &Repository, tip: Oid, commit: Oid) -> Result<bool, String> {
    let mut walk = repo.revwalk().map_err(|e| e.message().to_string())?;
    walk.push(tip).map_err(|e| e.message().to_string())?;
    walk.simplify_first_parent()
        .map_err(|e| e.message().to_string())?;
    for oid in walk {
        if oid.map_err(|e| e.message().to_string())? == commit {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_semantic() {
        assert_eq!(tag_for("1.2.0").unwrap(), "v1.2.0");
        assert_eq!(tag_for("1.0.0-rc.1").unwrap(), "v1.0.0-rc.1");
        for bad in ["v1.2.0", "1.2", "1", "one", "1.2.0 ", "", "01.2.0"] {
            assert!(tag_for(bad).is_err(), "{bad:?}");
        }
    }
}
