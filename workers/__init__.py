"""Everything that trains: target network, QSAE, masks, threshold search, recovery, export."""
