"""Where runs execute: the provider contract and its three adapters (local processes, EC2, a rented SSH
host) and the sessions that reach an instance (SSH/SFTP, or a local directory). Cloud libraries are
imported here only (boto3 in aws.py, paramiko in remote.py); base.py holds what every adapter shares."""
