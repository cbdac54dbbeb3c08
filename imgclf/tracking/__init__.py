"""MLflow: the store (`store`), the runs the stages log (`runs`), the data they used (`datasets`), the model
registry (`registry`) and the logged pyfunc model (`packaging`). Kept apart so that each stage imports, and
reruns for, only the concerns it uses: the trainers never import the registry or the packaging."""
