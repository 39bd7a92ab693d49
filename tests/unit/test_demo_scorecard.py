"""The demo prints the run summary's metrics next to the baselines."""

from sequifier.demo import print_scorecard


def test_scorecard_puts_each_metric_beside_its_baselines(capsys):
    print_scorecard({
        "best_epoch": 3,
        "metrics": {"itemId": {"count": 10, "accuracy": 0.61}, "value": {"count": 10, "rmse": 0.8}},
        "baselines": {"itemId": {"unigram": {"count": 10, "accuracy": 0.1}},
                      "value": {"training_mean": {"count": 10, "rmse": 1.3},
                                "previous_value": {"count": 10, "rmse": 1.1}}},
    })
    out = capsys.readouterr().out
    assert "best epoch 3" in out and "count" not in out
    assert "itemId   accuracy        model 0.61   baseline: unigram 0.1" in out
    assert "value    rmse            model 0.8   baseline: training_mean 1.3, previous_value 1.1" in out
