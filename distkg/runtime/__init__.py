"""Running distillation on Ray: the teacher scoring pool (pool), Ray Train students (students),
connecting to a local or cluster Ray on loopback-safe terms (cluster)."""
