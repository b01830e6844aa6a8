"""Continuous monitoring: model quality on labelled predictions and drift against the
champion's reference histograms (the monitor service in ``streams/`` feeds them).

- :mod:`monitoring.quality`: AUC, log loss, Brier, ECE, positive rate and mean score over
  the most recent labelled predictions of one model version, exact.
- :mod:`monitoring.drift`: PSI, Kolmogorov-Smirnov and Jensen-Shannon per feature and on
  the score, over fixed reference bins, kept up to date one prediction at a time.
"""
