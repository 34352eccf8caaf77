"""From trials to answers: optima, transfer verdict, laws, rules of thumb, prediction."""
