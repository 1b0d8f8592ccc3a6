//! wizard
