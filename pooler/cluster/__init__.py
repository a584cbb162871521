"""The cluster as the pooler sees it: node states published by the monitor, read by the
router and the admin views; failover decisions and the actions that carry them out."""
