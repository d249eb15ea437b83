"""Units of work: each public function owns one transaction. Routes call these, never SQL."""
