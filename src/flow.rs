//! Git Flow with the gate in the loop: `exp flow finish | release | hotfix`, released model
//! versions (`exp models`) and `exp model get NAME@VERSION`.
//!
//! Merges go through the `git` binary, so that the user's hooks, merge drivers and LFS filter
//! take part exactly as in a merge typed by hand; every merge into develop or main is gated
//! (by its result, before the merge commit is made) with the library's gate.

use std::path::{Path, PathBuf};

use git2::Repository;
use serde::Serialize;

use crate::compare::{parse_record, record_blobs, resolve, CompareError};
use crate::gate::{gate, GateOptions, GateReport};
use crate::git::{self, GitError};
use crate::lfs::{LfsStore, Oid};
use crate::record::layout;

/// A flow step that could not be completed; the repository is left as it was before it.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// A Git operation failed.
    #[error(transparent)]
    Git(#[from] GitError),
    /// Reading records failed.
    #[error(transparent)]
    Compare(#[from] CompareError),
    /// The gate refused the merge.
    #[error("the gate refused merging {branch} into {target}:\n  {details}")]
    Refused {
        /// The branch being merged.
        branch: String,
        /// develop or main.
        target: String,
        /// One line per failing experiment.
        details: String,
        /// 1 regression, 2 cannot decide.
        code: crate::exit::ExitCode,
    },
    /// The step cannot start from here.
    #[error("{0}")]
    Precondition(String),
    /// A merge conflicted outside the run records, which flow does not resolve for the user.
    #[error(
        "merging {branch} into {target} conflicts in files that are not run records:\n  {files}"
    )]
    Conflict {
        /// The branch being merged.
        branch: String,
        /// The target.
        target: String,
        /// The conflicting paths.
        files: String,
    },
    /// A `v*` tag that did not come through `exp flow release` (release.rs).
    #[error("{tag} is not a release made through the gate: {reason}")]
    NotReleased {
        /// The tag.
        tag: String,
        /// Why not.
        reason: String,
    },
    /// A model version does not exist or its weights are not available.
    #[error("{0}")]
    Model(String),
    /// Writing the weights failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl FlowError {
    /// The exit code: a refused gate answers 1 or 2, everything else is 2.
    pub fn exit_code(&self) -> crate::exit::ExitCode {
        match self {
            FlowError::Refused { code, .. } => *code,
            _ => crate::exit::ExitCode::Usage,
        }
    }

    /// What the user can do.
    pub fn hint(&self) -> Option<String> {
        match self {
            FlowError::Refused { .. } => Some(
                "nothing was merged; improve the model on the branch and record a new run (exp run), or put a better run of the branch at its tip (exp apply --best accuracy)".into(),
            ),
            FlowError::Conflict { .. } => Some(
                "merge by hand (git merge --no-ff), resolve, and commit: the hooks gate the result".into(),
            ),
            FlowError::Git(e) => e.hint(),
            FlowError::Compare(e) => e.hint(),
            FlowError::NotReleased { .. } => Some(
                "releases are made by `exp flow release VERSION`; `exp model get --force` takes the weights anyway".into(),
            ),
            _ => None,
        }
    }
}

fn clean_worktree(dir: &Path) -> Result<(), FlowError> {
    let status = git::git(dir, &["status", "--porcelain", "--untracked-files=no"])?;
    if !status.trim().is_empty() {
        return Err(FlowError::Precondition(format!(
            "the work tree has uncommitted changes; commit or stash them first:\n{}",
            status.trim_end()
        )));
    }
    Ok(())
}

/// Which side's run wins when both sides recorded the same experiment.
#[derive(Clone, Copy)]
enum Keep {
    /// The branch being merged (a finished feature brings its run).
    Merged,
    /// The target (a release merged back keeps develop's newer runs).
    Target,
}

/// Merges `branch` into `target` with `--no-ff`, resolving conflicts in run records by taking
/// one side's experiment directories and specs whole (`keep`), and gates the result before
/// committing. On refusal the merge is aborted and HEAD is back on `target` as it was.
fn gated_merge(
    repo: &Repository,
    dir: &Path,
    branch: &str,
    target: &str,
    message: &str,
    keep: Keep,
) -> Result<GateReport, FlowError> {
    git::git(dir, &["switch", "-q", target])?;
    let merged = git::git(dir, &["merge", "--no-ff", "--no-commit", branch]);
    if merged.is_err() {
        let conflicts = git::git(dir, &["diff", "--name-only", "--diff-filter=U"])?;
        let files: Vec<&str> = conflicts.lines().filter(|l| !l.is_empty()).collect();
        let run_files = |f: &&str| layout::experiment_of(f).is_some();
        if files.is_empty() || !files.iter().all(run_files) {
            let _ = git::git(dir, &["merge", "--abort"]);
            return Err(FlowError::Conflict {
                branch: branch.into(),
                target: target.into(),
                files: if files.is_empty() {
                    "(git stopped the merge without naming files)".into()
                } else {
                    files.join("\n  ")
                },
            });
        }
        // Both sides recorded a run of the same experiment: one side's directory and spec are
        // taken whole (never a mix of two runs' files).
        let source = match keep {
            Keep::Merged => branch,
            Keep::Target => "HEAD",
        };
        let mut experiments: Vec<String> = files
            .iter()
            .filter_map(|f| layout::experiment_of(f))
            .map(str::to_string)
            .collect();
        experiments.sort();
        experiments.dedup();
        for name in &experiments {
            let mut paths = vec![layout::run_dir(name)];
            if git::git(
                dir,
                &[
                    "cat-file",
                    "-e",
                    &format!("{source}:{}", layout::spec_path(name)),
                ],
            )
            .is_ok()
            {
                paths.push(layout::spec_path(name));
            }
            let mut args = vec!["checkout", source, "--"];
            args.extend(paths.iter().map(String::as_str));
            git::git(dir, &args)?;
            let mut add = vec!["add", "--"];
            add.extend(paths.iter().map(String::as_str));
            git::git(dir, &add)?;
        }
    }
    let tree = git::git(dir, &["write-tree"])?.trim().to_string();
    let options = GateOptions::from_config(repo, dir, false).map_err(FlowError::Precondition)?;
    let report = gate(
        repo,
        &resolve(repo, target)?,
        &resolve(repo, &tree)?,
        &options,
    )?;
    let code = report.exit_code();
    if code != crate::exit::ExitCode::Success {
        let _ = git::git(dir, &["merge", "--abort"]);
        return Err(FlowError::Refused {
            branch: branch.into(),
            target: target.into(),
            details: report.failures("").join("\n  "),
            code,
        });
    }
    git::git(dir, &["commit", "-q", "-m", message])?;
    Ok(report)
}

/// What a flow step did.
#[derive(Debug, Default, Serialize)]
pub struct FlowReport {
    /// One line per step.
    pub steps: Vec<String>,
    /// What the step noticed without refusing (an earlier run that scored better).
    pub warnings: Vec<String>,
}

/// `exp flow finish [BRANCH] [--keep]`: feature → develop with `--no-ff`, gated.
pub fn finish(
    repo: &Repository,
    branch: Option<&str>,
    keep: bool,
) -> Result<FlowReport, FlowError> {
    let dir = git::workdir(repo).to_path_buf();
    let (current, _) = git::current_branch(repo)?;
    let branch = branch.map(str::to_string).unwrap_or(current);
    if !branch.starts_with("feature/") {
        return Err(FlowError::Precondition(format!(
            "{branch} is not a feature branch; name one: exp flow finish feature/<name>"
        )));
    }
    let Ok(found) = repo.find_branch(&branch, git2::BranchType::Local) else {
        return Err(FlowError::Precondition(format!(
            "there is no branch {branch}"
        )));
    };
    // A sweep branch's tip is its last trial, not a chosen model: the merge would gate
    // whichever trial happened to finish last.
    if branch.starts_with("feature/sweep-") {
        let tip_message = found
            .get()
            .peel_to_commit()
            .ok()
            .and_then(|c| c.message().map(String::from))
            .unwrap_or_default();
        if !tip_message.starts_with(crate::sweep::PICK_PREFIX) {
            let id = branch.rsplit('-').next().unwrap_or_default();
            return Err(FlowError::Precondition(format!(
                "{branch} is a sweep branch whose tip is not a picked trial; pick the model to merge first: exp sweep pick {id} --best accuracy (or a trial by its index)"
            )));
        }
    }
    clean_worktree(&dir)?;
    let mut report = FlowReport::default();
    about_to_merge(repo, &branch, &mut report)?;
    let gate_report = match gated_merge(
        repo,
        &dir,
        &branch,
        "develop",
        &format!("Merge branch '{branch}' into develop"),
        Keep::Merged,
    ) {
        Ok(r) => r,
        Err(e) => {
            let _ = git::git(&dir, &["switch", "-q", &branch]);
            return Err(e);
        }
    };
    report.steps.push(format!(
        "merged {branch} into develop (--no-ff); the gate passed for {} experiment(s)",
        gate_report.experiments.len()
    ));
    if keep {
        report.steps.push(format!("kept {branch}"));
    } else {
        git::git(&dir, &["branch", "-q", "-D", &branch])?;
        report.steps.push(format!("deleted {branch}"));
    }
    Ok(report)
}

/// Says which run of each experiment the finish of `branch` is about to merge (the records at
/// its tip that develop does not have), and warns when an earlier run of the branch (since it
/// left develop, on the same eval set) scored better on a metric develop's `[gate]` judges.
fn about_to_merge(
    repo: &Repository,
    branch: &str,
    report: &mut FlowReport,
) -> Result<(), FlowError> {
    let tip = resolve(repo, branch)?;
    let Some(tip_commit) = tip.commit.as_ref().map(|c| c.id()) else {
        return Ok(());
    };
    let develop = resolve(repo, "develop").ok();
    let develop_records = match &develop {
        Some(d) => record_blobs(repo, &d.tree)?,
        None => Default::default(),
    };
    for (name, blob) in record_blobs(repo, &tip.tree)? {
        if develop_records.get(&name) == Some(&blob) {
            continue;
        }
        let runs = crate::apply::branch_runs(repo, tip_commit, &name)
            .map_err(|e| FlowError::Precondition(e.to_string()))?;
        // The run at the tip: the branch's run commit whose record is the tip's.
        let record = parse_record(repo, blob, branch, &name)?;
        let at_tip = runs.iter().find(|r| r.record_blob == blob);
        let shown = at_tip.map_or_else(String::new, |r| format!(" {}", r.name()));
        report.steps.push(format!(
            "merging {name}{shown} ({})",
            record
                .metrics
                .values
                .iter()
                .map(|(k, v)| format!("{k}={v:.4}"))
                .collect::<Vec<_>>()
                .join(" ")
        ));
        let policy = match &develop {
            Some(d) => crate::gate::base_policy(repo, d, &name).unwrap_or_default(),
            None => Default::default(),
        };
        for metric in &policy.metrics {
            let Some(best) = crate::apply::best(&runs, metric) else {
                continue;
            };
            let (Some(b), Some(t)) = (best.metrics.get(metric), record.metrics.values.get(metric))
            else {
                continue;
            };
            if at_tip.is_some_and(|r| r.commit == best.commit) || b == t {
                continue;
            }
            let better = match crate::metric::known(metric).map(|m| m.direction) {
                Some(crate::metric::Direction::Min) => b < t,
                _ => b > t,
            };
            if better {
                report.warnings.push(format!(
                    "an earlier run of {name} on {branch} scored better on {metric}: {} has {b:.4}, the run being merged {t:.4}; to merge that one instead, `exp apply {}` (or `exp apply --best {metric}`) on {branch} first",
                    best.name(),
                    best.name()
                ));
            }
        }
    }
    Ok(())
}

/// `exp flow release VERSION`: develop → release/VERSION → main (gated, tagged vVERSION with
/// the models it ships) → merged back into develop.
pub fn release(repo: &Repository, version: &str) -> Result<FlowReport, FlowError> {
    let dir = git::workdir(repo).to_path_buf();
    let tag = crate::release::tag_for(version).map_err(FlowError::Precondition)?;
    if repo.find_reference(&format!("refs/tags/{tag}")).is_ok() {
        return Err(FlowError::Precondition(format!("{tag} exists already")));
    }
    clean_worktree(&dir)?;
    // A release versions the models develop holds: it needs some, and something main lacks.
    let develop = resolve(repo, "develop").map_err(|_| {
        FlowError::Precondition("there is no develop branch to release from".into())
    })?;
    if record_blobs(repo, &develop.tree)?.is_empty() {
        return Err(FlowError::Precondition(
            "develop has no run record (experiments/*/metrics.toml): a release versions models; record one (exp run on a feature branch, exp flow finish) first".into(),
        ));
    }
    let id = |r: &crate::compare::Snapshot| r.commit.as_ref().map(|c| c.id());
    if let (Ok(main), Some(develop_id)) = (resolve(repo, "main"), id(&develop)) {
        let main_id = id(&main);
        // Contained, or the same files (develop's only news is the merge of the last release).
        if main_id == Some(develop_id)
            || main_id.is_some_and(|m| repo.graph_descendant_of(m, develop_id).unwrap_or(false))
            || main.tree.id() == develop.tree.id()
        {
            return Err(FlowError::Precondition(
                "main already has everything develop has: nothing to release".into(),
            ));
        }
    }
    let release = format!("release/{version}");
    let mut report = FlowReport::default();
    git::git(&dir, &["switch", "-q", "-c", &release, "develop"])?;
    report.steps.push(format!("created {release} from develop"));
    if let Err(e) = gated_merge(
        repo,
        &dir,
        &release,
        "main",
        &format!("Merge branch '{release}'"),
        Keep::Merged,
    ) {
        let _ = git::git(&dir, &["switch", "-q", "develop"]);
        let _ = git::git(&dir, &["branch", "-q", "-D", &release]);
        return Err(e);
    }
    report
        .steps
        .push(format!("merged {release} into main (--no-ff, gated)"));
    let message = crate::release::message(repo, &resolve(repo, "HEAD")?.tree, &tag)?;
    git::git(&dir, &["tag", "-a", &tag, "-m", &message])?;
    report.steps.push(format!(
        "tagged main {tag}:\n    {}",
        message.lines().skip(2).collect::<Vec<_>>().join("\n    ")
    ));
    // The tagged release (with anything committed on the release branch) goes back into
    // develop, so that develop's history contains every release.
    gated_merge(
        repo,
        &dir,
        &tag,
        "develop",
        &format!("Merge tag '{tag}' into develop"),
        Keep::Target,
    )?;
    report.steps.push(format!("merged {tag} back into develop"));
    git::git(&dir, &["branch", "-q", "-d", &release])?;
    report.steps.push(format!("deleted {release}"));
    Ok(report)
}

/// `exp flow hotfix NAME`: a hotfix branch from main.
pub fn hotfix(repo: &Repository, name: &str) -> Result<FlowReport, FlowError> {
    let dir = git::workdir(repo).to_path_buf();
    let branch = format!("hotfix/{name}");
    if !git2::Branch::name_is_valid(&branch).unwrap_or(false) {
        return Err(FlowError::Precondition(format!(
            "{branch:?} is not a valid branch name (Git's rules: git check-ref-format --branch)"
        )));
    }
    clean_worktree(&dir)?;
    git::git(&dir, &["switch", "-q", "-c", &branch, "main"])?;
    Ok(FlowReport {
        steps: vec![format!("created {branch} from main; record the fix with exp run, then merge it into main and develop (the hooks gate both)")],
        warnings: Vec::new(),
    })
}

/// One released model version.
#[derive(Debug, Clone, Serialize)]
pub struct ModelVersion {
    /// Experiment (model) name.
    pub name: String,
    /// Version (the tag without its v).
    pub version: String,
    /// Metrics of the released run.
    pub metrics: std::collections::BTreeMap<String, f64>,
    /// LFS oid of the weights.
    pub oid: String,
    /// Size of the weights in bytes.
    pub size: u64,
    /// Why the tag is not a release made through the gate (release.rs), when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_released: Option<String>,
}

/// Every released model version (tags `v*`), oldest version first (semantic version order).
pub fn models(repo: &Repository, name: Option<&str>) -> Result<Vec<ModelVersion>, FlowError> {
    let mut out = Vec::new();
    let tags = repo
        .tag_names(Some("v[0-9]*"))
        .map_err(|source| CompareError::Git {
            context: "release tags".into(),
            source,
        })?;
    let mut tags: Vec<String> = tags.iter().flatten().map(String::from).collect();
    // By version, not by name: v1.10.0 comes after v1.9.0 (tags that are not a semantic
    // version last, by name).
    let version = |t: &String| semver::Version::parse(t.trim_start_matches('v')).ok();
    tags.sort_by(|a, b| match (version(a), version(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.cmp(b),
    });
    for tag in tags {
        let not_released = crate::release::check_existing(repo, &tag).err();
        let snapshot = resolve(repo, &tag)?;
        for (experiment, blob) in record_blobs(repo, &snapshot.tree)? {
            if name.is_some_and(|n| n != experiment) {
                continue;
            }
            let r = parse_record(repo, blob, &tag, &experiment)?;
            out.push(ModelVersion {
                name: experiment,
                version: tag.trim_start_matches('v').to_string(),
                metrics: r.metrics.values.clone(),
                oid: r.model.oid.clone(),
                size: r.model.size,
                not_released: not_released.clone(),
            });
        }
    }
    Ok(out)
}

/// A path inside the repository's git dir (or the common one): writing there could replace a
/// hook, a ref or an object.
fn refuse_git_dir(repo: &Repository, target: &Path) -> Result<(), FlowError> {
    match git::inside_git_dir(repo, target) {
        Some(git_dir) => Err(FlowError::Model(format!(
            "--out {} is inside the repository's git dir {}; write the weights elsewhere",
            target.display(),
            git_dir.display()
        ))),
        None => Ok(()),
    }
}

/// `exp model get NAME@VERSION`: writes the released weights to `out` (verified against the
/// record's sha256); returns the path written. A `v*` tag that is not a release made through
/// the gate (release.rs) is refused unless `force`.
pub fn model_get(
    repo: &Repository,
    spec: &str,
    out: Option<&Path>,
    force: bool,
) -> Result<(PathBuf, String), FlowError> {
    let (name, version) = match spec.split_once('@') {
        Some((_, "")) => {
            return Err(FlowError::Model(format!(
                "{spec:?} names no version: NAME@VERSION (e.g. mnist-cnn@1.0.0), or NAME alone for the latest release"
            )))
        }
        Some((name, version)) => (name, version.to_string()),
        // NAME alone: its latest release made through the gate.
        None => {
            let latest = models(repo, Some(spec))?
                .into_iter()
                .rfind(|m| m.not_released.is_none())
                .ok_or_else(|| {
                    FlowError::Model(format!(
                        "no release holds a model {spec:?} (exp models lists the released versions; NAME@VERSION names one)"
                    ))
                })?;
            (spec, latest.version)
        }
    };
    let version = version.as_str();
    let tag = format!("v{version}");
    let snapshot = resolve(repo, &tag).map_err(|_| {
        FlowError::Model(format!("there is no release {tag} (exp models lists them)"))
    })?;
    if let Err(reason) = crate::release::check_existing(repo, &tag) {
        if !force {
            return Err(FlowError::NotReleased { tag, reason });
        }
    }
    let blobs = record_blobs(repo, &snapshot.tree)?;
    let blob = blobs
        .get(name)
        .ok_or_else(|| FlowError::Model(format!("release {tag} has no model {name:?}")))?;
    let record = parse_record(repo, *blob, &tag, name)?;
    let oid = Oid::parse(&record.model.oid).map_err(|e| FlowError::Model(e.to_string()))?;
    let store = LfsStore::for_repo(repo);
    if !store.contains(&oid) {
        return Err(FlowError::Model(format!(
            "the weights of {name}@{version} (LFS object {}) are not in this repository's LFS store; fetch them (git lfs fetch --all) first",
            &record.model.oid[..12]
        )));
    }
    store.verify(&oid).map_err(|e| {
        FlowError::Model(format!(
            "the stored weights of {name}@{version} are damaged: {e}"
        ))
    })?;
    let target = match out {
        Some(out) => out.to_path_buf(),
        None => {
            git::output_dir(repo, Path::new("."))?.join(format!("{name}-{version}.safetensors"))
        }
    };
    refuse_git_dir(repo, &target)?;
    if std::fs::symlink_metadata(&target).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(FlowError::Model(format!(
            "--out {} is a symbolic link; exp never writes through one",
            target.display()
        )));
    }
    std::fs::copy(store.object_path(&oid), &target).map_err(|source| FlowError::Write {
        path: target.clone(),
        source,
    })?;
    Ok((target, version.to_string()))
}
