"""MLflow tag names dyrank writes and reads back, defined once. Constants only: dashboards and tests
import this without pulling in MLflow."""

PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: nests a run under its parent in the UI
KIND_TAG = "dyrank.kind"  # pipeline, study, train, eval, baseline, zeroshot, ...
FAILURE_TAG = "dyrank.failure_reason"
RECORD_TAG = "dyrank.record_id"  # unique per create, so a retried create finds its first try

# on a pipeline's child runs: which rank, and where its work ran
RANK_TAG = "dyrank.rank"
ACTOR_TAG = "dyrank.actor_id"
NODE_TAG = "dyrank.node_id"
GPUS_TAG = "dyrank.gpu_ids"

# on a pipeline run
CONFIG_NAME_TAG = "dyrank.config_name"
BEST_BASELINE_TAG = "dyrank.best_baseline"
EVALUATOR_BASE_LOADS_TAG = "dyrank.evaluator_base_loads"
REGISTERED_MODEL_TAG = "dyrank.registered_model"  # NAME/VERSION of the selected adapter in the Model Registry

# on a study run and its trials' pipeline runs
STUDY_TAG = "dyrank.study"
TRIAL_NUMBER_TAG = "dyrank.trial_number"
TRIAL_PARAMS_TAG = "dyrank.trial_params"
RETRY_OF_TRIAL_TAG = "dyrank.retry_of_trial"
PARETO_TRIALS_TAG = "dyrank.pareto_trials"

# provenance, on every run: dyrank.provenance.{version,commit,device,torch,transformers,peft,bitsandbytes,ray,mlflow}
PROVENANCE_PREFIX = "dyrank.provenance."
