#!/usr/bin/env bash
# Retrain the pipeline and report what changed. The same steps run in GitHub Actions
# (.github/workflows/retrain.yml) and on a laptop, in the git repository around the working directory.
#
#   scripts/retrain.sh [--base REF] [--report FILE] [--no-push] [KEY=VALUE ...]
#
#   1. dvc pull     what the default DVC remote holds; a first run with an empty remote is fine (the pipeline
#                   rebuilds what is missing), and no remote at all means nothing is pulled or pushed
#   2. dvc repro    or, given KEY=VALUE overrides, `dvc exp run -S KEY=VALUE ...`: params.yaml, dvc.lock and
#                   the outputs in the workspace become the experiment's
#   3. dvc push     the new outputs, so the next run (and any `git clone` + `dvc pull`) gets them without
#                   retraining; --no-push skips it
#   4. report       Markdown in FILE (default results/ci/report.md): `dvc params diff REF --md`,
#                   `dvc metrics diff REF --md` and results/analysis/summary.md. REF defaults to
#                   origin/$GITHUB_BASE_REF on a pull request, else origin/main
#   5. publish      in GitHub Actions on a pull request: comment on it (editing this token's last comment, else
#                   a new one) and add the report to the job summary; elsewhere print the report's path
#
# Environment: PARAMS_OVERRIDES (space-separated KEY=VALUE, appended to the arguments: the workflow's input),
# MLFLOW_TRACKING_URI / MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD for a tracking server, the DVC
# remote's credentials (e.g. AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), GH_TOKEN and PR_NUMBER to comment.
# Exit status: 0 done, 2 usage, a bad override or a stage's refusal of something you can fix (its `error: ...`
# line last), anything else the failing step's.
set -euo pipefail

usage() { sed -n '2,23p' "$0" | sed -E 's/^# ?//'; }
note() { echo "retrain: $*" >&2; }
die() { echo "retrain: error: $1" >&2; exit "${2:-1}"; }  # die MESSAGE [EXIT_STATUS]

base=""
report="results/ci/report.md"
push=1
overrides=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --base) [[ $# -ge 2 ]] || die "--base needs a git ref" 2; base="$2"; shift 2 ;;
    --base=*) base="${1#*=}"; shift ;;
    --report) [[ $# -ge 2 ]] || die "--report needs a file name" 2; report="$2"; shift 2 ;;
    --report=*) report="${1#*=}"; shift ;;
    --no-push) push=0; shift ;;
    -h | --help) usage; exit 0 ;;
    -*) die "unknown option '$1' (scripts/retrain.sh --help lists them)" 2 ;;
    *) overrides+=("$1"); shift ;;
  esac
done
if [[ -n "${PARAMS_OVERRIDES:-}" ]]; then
  read -r -a extra <<<"$PARAMS_OVERRIDES"
  overrides+=("${extra[@]}")
fi
for override in ${overrides[@]+"${overrides[@]}"}; do
  [[ "$override" =~ ^[A-Za-z_][A-Za-z0-9_.]*=. ]] \
    || die "override '$override' is not KEY=VALUE (e.g. scratch.epochs=5; lists without spaces: [32,64])" 2
done

root="$(git rev-parse --show-toplevel 2>/dev/null)" || die "run me inside the project's git repository" 2
cd "$root"
[[ -f dvc.yaml && -f params.yaml ]] || die "$root has no dvc.yaml and params.yaml: not the project" 2
# dvc.yaml runs `python`: the project's environment when there is one (make setup), else the caller's.
if [[ -x .venv/bin/python ]]; then
  export PATH="$root/.venv/bin:$PATH"
fi
command -v dvc >/dev/null || die "dvc is not on PATH (make setup installs it into .venv)"
# `dvc exp run` commits the experiment to a hidden git ref, which needs an identity; CI machines have none.
if ! git config user.email >/dev/null; then
  export GIT_AUTHOR_NAME="${GIT_AUTHOR_NAME:-imgclf retrain}" GIT_AUTHOR_EMAIL="${GIT_AUTHOR_EMAIL:-retrain@imgclf.invalid}"
  export GIT_COMMITTER_NAME="${GIT_COMMITTER_NAME:-$GIT_AUTHOR_NAME}"
  export GIT_COMMITTER_EMAIL="${GIT_COMMITTER_EMAIL:-$GIT_AUTHOR_EMAIL}"
fi
if [[ -z "$base" ]]; then
  base="origin/${GITHUB_BASE_REF:-main}"
fi

# params.yaml and the overrides are checked against the params schema before anything runs: DVC would add a
# mistyped key to params.yaml without complaint, and a YAML error would surface as a stage's failure mid-run.
python - ${overrides[@]+"${overrides[@]}"} <<'PY' || exit 2
import sys

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from imgclf.config import ConfigError, params_from_dict, read_params_yaml

try:
    params = read_params_yaml("params.yaml")  # parsed as DVC parses it (YAML 1.2: 3e-4 is a float)
    for override in sys.argv[1:]:
        key, value = override.split("=", 1)
        *parents, leaf = key.split(".")
        node = params
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                sys.exit(f"retrain: error: override {override}: {part} is not a section of params.yaml")
        try:
            node[leaf] = YAML(typ="safe").load(value)  # as `dvc exp run -S` parses it
        except YAMLError:
            sys.exit(f"retrain: error: override {override}: the value is not valid YAML")
    params_from_dict(params, source="params.yaml" + "".join(f" {override}" for override in sys.argv[1:]))
except ConfigError as error:
    sys.exit(f"retrain: error: {error}")
PY

# 1. Pull. --allow-missing: objects the remote lacks (a first run, outputs nobody pushed) are not an error,
# `dvc repro` rebuilds them; credentials or network failures still are. Only the stages dvc.lock records have
# anything to pull: for each output of a stage never run (all of them on a clone with no dvc.lock yet) DVC would
# warn "No file hash info found for '<output>'. It won't be created."
# With no default remote, `dvc remote default` prints "No default remote set" on stdout and exits 1.
remote="$(dvc remote default 2>/dev/null)" || remote=""
locked=()
if [[ -f dvc.lock ]]; then
  stage_names='import yaml; print("\n".join((yaml.safe_load(open("dvc.lock")) or {}).get("stages", {})))'
  mapfile -t locked < <(python -c "$stage_names")
fi
if [[ -n "$remote" && ${#locked[@]} -eq 0 ]]; then
  note "no stage recorded in dvc.lock yet: nothing to pull from '$remote'; the pipeline runs from its inputs"
elif [[ -n "$remote" ]]; then
  note "dvc pull from remote '$remote'"
  dvc pull --allow-missing "${locked[@]}" \
    || die "dvc pull from '$remote' failed (credentials? network?): see DVC's message above"
  if ! dvc status --cloud --quiet 2>/dev/null; then
    note "remote '$remote' lacks outputs of this commit (a first run with an empty remote?):" \
      "dvc repro rebuilds whatever is missing locally, and dvc push uploads the outputs"
  fi
else
  note "no default DVC remote (dvc remote add -d NAME URL): nothing to pull; the pipeline runs from its inputs"
fi

# 2. Retrain: only the stages whose code, data or params changed run.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

# run_pipeline DVC_ARGS...: dvc with its and the stages' output passing through live, except that a stage's
# refusal of something the user can fix (it prints one `error: ...` line and exits 2, imgclf/stage_runner.py) becomes this
# script's exit 2 with that line last, instead of DVC's "ERROR: failed to reproduce ..." and status 255. DVC runs as
# imgclf/dvc_cli.py: `dvc exp run` on a clone with no dvc.lock yet warns of nothing to check out for each output.
run_pipeline() {
  local held="$scratch/held.err" status=0 failed message
  : >"$held"
  # stdout passes through; stderr goes through awk, which holds back `error:` lines and DVC's ERROR line.
  { python -m imgclf.dvc_cli "$@" 2>&1 1>&3 3>&- \
      | awk -v held="$held" '/^(error|ERROR): / { print > held; fflush(held); next } { print; fflush() }' >&2
  } 3>&1 || status=$?
  if [[ "$status" -eq 0 ]]; then
    [[ ! -s "$held" ]] || cat "$held" >&2  # none expected on success, but never swallow a line
    return 0
  fi
  failed="$(grep -m1 -oE "^ERROR: failed to reproduce '[^']+'.*, exited with 2$" "$held" || true)"
  message="$(grep -m1 '^error: ' "$held" || true)"
  if [[ -n "$failed" && -n "$message" ]]; then
    failed="${failed#ERROR: failed to reproduce \'}"
    die "stage '${failed%%\'*}': ${message#error: }" 2
  fi
  cat "$held" >&2 2>/dev/null || true  # anything else: DVC's own words, then its exit status
  exit "$status"
}

if [[ ${#overrides[@]} -gt 0 ]]; then
  set_params=()
  for override in "${overrides[@]}"; do
    set_params+=(--set-param "$override")
  done
  note "dvc exp run ${set_params[*]}"
  run_pipeline exp run "${set_params[@]}"
else
  note "dvc repro"
  run_pipeline repro
fi

# 3. Push.
if [[ -n "$remote" && "$push" -eq 1 ]]; then
  note "dvc push to remote '$remote'"
  dvc push || die "dvc push to '$remote' failed (credentials? write access?): see DVC's message above"
fi

# 4. Report.
summary="results/analysis/summary.md"
[[ -s "$summary" ]] || die "$summary is missing after the pipeline ran: did the analyze stage change its outputs?"
# DVC prints a header-only table when nothing differs.
table_rows() { grep -c '^|' <<<"$1" | awk '{ print $1 - 2 }'; }
mkdir -p "$(dirname "$report")"
{
  echo "## Retraining report"
  echo
  echo "Commit \`$(git rev-parse --short HEAD)\` compared with \`$base\`."
  if [[ ${#overrides[@]} -gt 0 ]]; then
    echo "Params overrides: \`${overrides[*]}\`."
  fi
  echo
  if git rev-parse --verify --quiet "$base^{commit}" >/dev/null; then
    echo "### Params"
    echo
    params_diff="$(dvc params diff "$base" --md)" || die "dvc params diff $base failed"
    if [[ "$(table_rows "$params_diff")" -gt 0 ]]; then
      echo "$params_diff"
    else
      echo "No params differ from \`$base\`."
    fi
    echo
    echo "### Metrics"
    echo
    metrics_diff="$(dvc metrics diff "$base" --md 2>"$scratch/metrics.err")" \
      || die "dvc metrics diff $base failed: $(cat "$scratch/metrics.err")"
    # A base before the first dvc.lock, or whose outputs nobody pushed, has no metrics: DVC warns and shows "-".
    if grep -q "failed to load some metrics for following revisions: '$base'" "$scratch/metrics.err"; then
      echo "\`$base\` has no metrics to compare with (its pipeline never ran, or its outputs are not in the" \
        "DVC remote): its column shows -."
      echo
    fi
    if [[ "$(table_rows "$metrics_diff")" -gt 0 ]]; then
      echo "$metrics_diff"
    else
      echo "No metrics differ from \`$base\`."
    fi
  else
    echo "\`$base\` is not a commit in this clone (a shallow checkout? \`git fetch origin main\`): no diff." \
      "This run's metrics:"
    echo
    dvc metrics show --md
  fi
  echo
  echo "### Summary (\`$summary\`)"
  echo
  cat "$summary"
} >"$report"

# 5. Publish.
if [[ -n "${GITHUB_STEP_SUMMARY:-}" ]]; then
  cat "$report" >>"$GITHUB_STEP_SUMMARY"
fi
if [[ "${GITHUB_ACTIONS:-}" == true && "${GITHUB_EVENT_NAME:-}" == pull_request ]]; then
  pr="${PR_NUMBER:-}"
  if [[ -z "$pr" && "${GITHUB_REF:-}" =~ ^refs/pull/([0-9]+)/ ]]; then
    pr="${BASH_REMATCH[1]}"
  fi
  [[ -n "$pr" ]] || die "a pull_request run without PR_NUMBER or a refs/pull/N/... GITHUB_REF"
  # GitHub refuses comments over 65,536 characters; the artifact keeps the whole report.
  body="$scratch/comment.md"
  head -c 60000 "$report" >"$body"
  if [[ "$(wc -c <"$report")" -gt 60000 ]]; then
    printf '\n\n(cut at 60,000 characters: the whole report is the run artifact)\n' >>"$body"
  fi
  # Fork pull requests get a read-only token: the report stays in the artifact and the job summary.
  if gh pr comment "$pr" --edit-last --body-file "$body" 2>/dev/null \
    || gh pr comment "$pr" --body-file "$body"; then
    note "report posted on pull request #$pr"
  else
    echo "::warning::could not comment on pull request #$pr (a fork's read-only token?); the report is in the artifact"
  fi
else
  note "report written"
  echo "$root/$report"
fi
