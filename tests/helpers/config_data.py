"""A small valid train config (as a plain dict) shared by the config tests."""

TRAIN_CONFIG = {
    "project_root": ".",
    "metadata_config_path": "configs/metadata_configs/data.json",
    "model_name": "m",
    "target_columns": ["itemId"],
    "target_column_types": {"itemId": "categorical"},
    "seq_length": 8,
    "export_generative_model": True,
    "export_embedding_model": False,
    "inference_batch_size": 4,
    "model_spec": {"dim_model": 32, "n_head": 4, "num_layers": 1, "dim_feedforward": 64,
                   "initial_embedding_dim": 32},
    "training_spec": {"device": "cpu", "epochs": 1, "batch_size": 4, "learning_rate": 0.01,
                      "criterion": {"itemId": "CrossEntropyLoss"}, "save_interval_epochs": 1},
}
