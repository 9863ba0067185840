"""The cluster test bed's Django application (bench/cluster): every request touches the
shared PostgreSQL, and every POST inserts one row, so the rows in the database can be
counted against the 2xx POSTs the load generator was answered."""
