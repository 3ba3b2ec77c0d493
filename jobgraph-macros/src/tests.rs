mod snapshots {}
