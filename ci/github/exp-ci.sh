#!/usr/bin/env bash
# exp's CI steps (written by `exp ci init github`; docs/ci.md in the exp repository). The workflow
# calls this one script, and exp's own test suite runs it against real repositories, so what CI
# does is what a user does by hand: `exp gate`, `exp diff --md`, `exp verify`.
#
#   exp-ci.sh restore        fetch the LFS objects the checked-out commit references
#   exp-ci.sh pr BASE        gate HEAD against BASE (--verify when EXP_DATA holds data), write
#                            the job summary and exp-out/pr-comment.md; exit as the gate exits
#   exp-ci.sh main           check and evaluate the latest release on main
#
# The job summary goes to $GITHUB_STEP_SUMMARY (stdout when unset). Exit codes are the gate's:
# 0 pass, 1 regression, 2 cannot decide.
set -uo pipefail

summary=${GITHUB_STEP_SUMMARY:-/dev/stdout}
mkdir -p exp-out

# Whether this runner has evaluation data: EXP_DATA set to a non-empty folder.
have_data() {
  [ -n "${EXP_DATA:-}" ] && [ -d "$EXP_DATA" ] && [ -n "$(ls -A "$EXP_DATA" 2>/dev/null)" ]
}

no_data_note() {
  echo "> No evaluation data on this runner (EXP_DATA is unset or empty): $1 The records were audited against their committed artifacts; the weights were not re-evaluated. Set the repository variable EXP_DATA to a folder the runner can read to verify." 
}

case "${1:-}" in
  restore)
    if command -v git-lfs >/dev/null 2>&1; then
      git lfs install --local >/dev/null && git lfs pull
    else
      exp pull
    fi
    ;;
  pr)
    base=${2:?usage: exp-ci.sh pr BASE}
    if have_data; then
      mode="verified: the committed weights were re-evaluated on the runner's data"
      exp gate --verify --base "$base" --head HEAD >exp-out/gate.txt 2>&1
      rc=$?
    else
      mode="not verified"
      exp gate --base "$base" --head HEAD >exp-out/gate.txt 2>&1
      rc=$?
    fi
    case $rc in
      0) verdict="pass" ;;
      1) verdict="REGRESSION" ;;
      *) verdict="cannot decide" ;;
    esac
    {
      echo "## exp gate: $verdict ($mode)"
      echo
      [ "$mode" = "not verified" ] && { no_data_note "the plain gate ran."; echo; }
      echo '```'
      cat exp-out/gate.txt
      echo '```'
      echo
      exp diff --md "$base" HEAD 2>&1 || true
    } >exp-out/pr-comment.md
    cat exp-out/pr-comment.md >>"$summary"
    exit $rc
    ;;
  main)
    tag=$(git tag --list 'v[0-9]*' --sort=-v:refname --merged HEAD | head -1)
    if [ -z "$tag" ]; then
      echo "## exp: no release on main yet (exp flow release VERSION makes one)" >>"$summary"
      exit 0
    fi
    if ! exp model check-release "$tag" >exp-out/release.txt 2>&1; then
      { echo "## exp: $tag is not a release made through the gate"; echo; echo '```'; cat exp-out/release.txt; echo '```'; } >>"$summary"
      exit 1
    fi
    if have_data; then
      exp verify "$tag" >exp-out/verify.txt 2>&1
      rc=$?
      { echo "## exp verify $tag: $([ $rc -eq 0 ] && echo verified || echo FAILED)"; echo; echo '```'; cat exp-out/verify.txt; echo '```'; } >>"$summary"
      exit $rc
    fi
    { echo "## exp: $tag is a release made through the gate"; echo; no_data_note "exp verify did not run."; } >>"$summary"
    ;;
  *)
    echo "usage: exp-ci.sh restore | pr BASE | main" >&2
    exit 2
    ;;
esac
