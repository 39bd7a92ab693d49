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


def test_backtest_lines_name_the_skill_and_the_best_baseline(capsys):
    from sequifier.demo import print_backtest

    print_backtest({"backtest": {"origins": 20, "horizon": 48, "targets": {"demand_gw": {
        "model": {"mae": 0.2}, "baselines": {"persistence": {"mae": 0.5}, "seasonal_naive": {"mae": 0.25}},
        "best_baseline": "seasonal_naive", "skill": 0.2, "intervals": {"coverage": 0.79}}}}})
    out = capsys.readouterr().out
    assert "20 origins x 48 half-hours" in out and "MAE model 0.200 GW" in out
    assert "skill +0.20 against the best baseline (seasonal_naive)" in out
    assert "80% intervals cover 79% of the truths" in out
